"""`synthmix generate --backend openai` against a real server: `transformers serve` on a tiny local model (one per
module, on a free loopback port, offline; those tests are marked slow for its ~15 s start), and for the retry logic
a small HTTP server written here that answers 429 and 5xx before it answers 200."""

from __future__ import annotations

import http.server
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from testkit import subprocess_env

from synthmix.cli import main as synthmix
from synthmix.trainer.generation.served import Endpoint, Prompts, ServedError, ServedSampling, generate_served
from synthmix.trainer.reporting.cards import data_card_path

TEXTS = [f"Sentence number {i} tells a short story about the number {i} and its friends." for i in range(12)]
PROVENANCE = {
    "id", "sample", "backend", "base_url", "model", "sampling", "request_seed", "prompt_source", "usage",
    "finish_reason",
}  # fmt: skip
READY_TIMEOUT = 120


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_tokenizer, tiny_model) -> Path:
    """The tiny Llama with its tokenizer, whose ChatML template serves the chat endpoint."""
    folder = tmp_path_factory.mktemp("served-model")
    tiny_model(tiny_tokenizer).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    assert (folder / "chat_template.jinja").is_file() or "chat_template" in (
        folder / "tokenizer_config.json"
    ).read_text()
    return folder


@pytest.fixture(scope="module")
def server(model_dir: Path, tmp_path_factory) -> Iterator[str]:
    """`transformers serve MODEL_DIR` on 127.0.0.1 (pinned to the folder: requests name it as their model); its
    base URL once /health answers."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    command = [
        str(Path(sys.executable).parent / "transformers"), "serve", str(model_dir), "--host", "127.0.0.1",
        "--port", str(port), "--device", "cpu", "--log-level", "warning",
    ]  # fmt: skip
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=subprocess_env(HF_HUB_OFFLINE="1")
        )
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            if process.poll() is not None:
                pytest.fail(f"transformers serve exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"transformers serve not ready after {READY_TIMEOUT} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.25)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def prompts_file(tmp_path) -> Path:
    path = tmp_path / "real.jsonl"
    path.write_text("".join(json.dumps({"body": text}) + "\n" for text in TEXTS), encoding="utf-8")
    return path


def generate(server: str, model: Path | str, prompts: Path, out: Path, n: int, *extra: str) -> int:
    """The command line in this process (texts have 14 words: --prompt-tokens 4 unless `extra` says)."""
    args = ["--backend", "openai", "--base-url", server, "--model", str(model), "--prompts", str(prompts)]
    args += ["--out", str(out), "--n", str(n), "--max-new-tokens", "6", "--prompt-tokens", "4"]
    return synthmix(["generate", *args, *extra])


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.slow  # the module's server takes ~15 s to start
def test_writes_lines_with_provenance_and_a_larger_n_appends_only_the_missing(
    server, model_dir, prompts_file, tmp_path, capsys
):
    out = tmp_path / "syn.jsonl"
    flags = (
        "--text-field",
        "body",
        "--prompt-tokens",
        "3",
        "--seed",
        "5",
        "--temperature",
        "0.8",
        "--concurrency",
        "3",
    )
    assert generate(server, model_dir, prompts_file, out, 4, *flags) == 0
    assert "wrote 4 new samples" in capsys.readouterr().err
    first = read_jsonl(out)
    assert len(first) == 4 and [line["sample"] for line in first] == [0, 1, 2, 3]
    for line in first:
        assert PROVENANCE <= set(line)
        assert line["backend"] == "openai" and line["base_url"] == server and line["model"] == str(model_dir)
        assert line["sampling"] == {"temperature": 0.8, "top_p": 1.0, "max_tokens": 6, "seed": 5}
        source = line["prompt_source"]
        assert source["file"] == str(prompts_file) and source["field"] == "body"
        assert source["unit"] == "words" and source["length"] == 3
        prompt = " ".join(TEXTS[source["index"]].split()[:3])
        assert line["text"].startswith(prompt)  # the real text's first three words, then the model's text
        assert line["id"] == f"s5-p{source['index']}-n{line['sample']}"
        assert line["usage"]["prompt_tokens"] > 0 and 0 < line["usage"]["completion_tokens"] <= 6
        assert line["finish_reason"] in ("stop", "length")
    card = data_card_path(out).read_text()
    assert "**backend**: openai" in card and f"**generator**: {model_dir} at {server}" in card
    assert "| lines | 4 |" in card and "| completion tokens |" in card

    assert generate(server, model_dir, prompts_file, out, 7, *flags) == 0
    assert "wrote 3 new samples" in capsys.readouterr().err
    second = read_jsonl(out)
    assert second[:4] == first  # kept as they were, not requested again
    assert [line["sample"] for line in second] == list(range(7))
    assert len({line["id"] for line in second}) == 7
    assert "| lines | 7 |" in data_card_path(out).read_text()

    # The same n again: nothing to request. Other settings: refused, the file untouched.
    assert generate(server, model_dir, prompts_file, out, 7, *flags) == 0
    assert "wrote 0 new samples" in capsys.readouterr().err
    before = out.read_bytes()
    changed = [f if f != "0.8" else "0.7" for f in flags]
    assert generate(server, model_dir, prompts_file, out, 8, *changed) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: {out}:1: written with sampling") and "0.7" in err
    assert out.read_bytes() == before


@pytest.mark.slow  # the module's server takes ~15 s to start
def test_token_counted_prompts_are_exact_prefixes_of_the_real_text(server, model_dir, prompts_file, tmp_path):
    out = tmp_path / "tokens.jsonl"
    flags = ("--text-field", "body", "--prompt-tokens", "5", "--tokenizer", str(model_dir))
    assert generate(server, model_dir, prompts_file, out, 3, *flags) == 0
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    for line in read_jsonl(out):
        source = line["prompt_source"]
        assert source["unit"] == "tokens" and source["tokenizer"] == str(model_dir)
        real = TEXTS[source["index"]]
        ids = tokenizer(real, add_special_tokens=False)["input_ids"][:5]
        prompt = tokenizer.decode(ids)
        assert real.startswith(prompt) and line["text"].startswith(prompt)


@pytest.mark.slow  # the module's server takes ~15 s to start
def test_chat_prompts_end_at_the_last_user_turn_and_come_back_as_messages(server, model_dir, tmp_path):
    chats = [
        [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": TEXTS[i]},
         {"role": "assistant", "content": "A real answer."}, {"role": "user", "content": f"And {i}?"},
         {"role": "assistant", "content": "The real last reply, never sent."}]
        for i in range(4)
    ]  # fmt: skip
    chats.append([{"role": "assistant", "content": "no user turn: never a prompt"}])
    prompts = tmp_path / "chats.jsonl"
    prompts.write_text("".join(json.dumps({"conversation": c}) + "\n" for c in chats), encoding="utf-8")
    out = tmp_path / "chats-out.jsonl"
    assert generate(server, model_dir, prompts, out, 6, "--messages-field", "conversation") == 0
    lines = read_jsonl(out)
    assert len(lines) == 6
    for line in lines:
        index = line["prompt_source"]["index"]
        assert index < 4 and line["prompt_source"]["unit"] == "conversation" and "text" not in line
        *turns, reply = line["messages"]
        assert turns == chats[index][:4]
        assert reply["role"] == "assistant" and reply["content"] != "The real last reply, never sent."
    assert len({line["id"] for line in lines}) == 6  # 4 conversations, reused with other seeds
    assert "6 chats, each a conversation" in data_card_path(out).read_text()


@pytest.mark.slow  # the module's server takes ~15 s to start
def test_a_torn_last_line_is_dropped_on_resume(server, model_dir, prompts_file, tmp_path, capsys):
    out = tmp_path / "torn.jsonl"
    assert generate(server, model_dir, prompts_file, out, 3, "--text-field", "body") == 0
    intact = out.read_bytes()
    with open(out, "ab") as file:
        file.write(intact.splitlines()[0][:40])  # a crash mid-write: no newline, half a JSON object
    assert generate(server, model_dir, prompts_file, out, 4, "--text-field", "body") == 0
    err = capsys.readouterr().err
    assert "dropped a torn last line (40 bytes)" in err and "wrote 1 new samples" in err
    lines = read_jsonl(out)
    assert [line["sample"] for line in lines] == [0, 1, 2, 3]
    assert out.read_bytes().startswith(intact)


@pytest.mark.slow  # the module's server takes ~15 s to start
def test_a_client_error_fails_at_once_with_the_servers_message(server, prompts_file, tmp_path, capsys):
    out = tmp_path / "never.jsonl"
    assert generate(server, "not-the-served-model", prompts_file, out, 2, "--text-field", "body") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len([e for e in err if e.startswith("error:")]) == 1
    assert err[-1].startswith(f"error: {server}/completions: HTTP 400: ") and "not-the-served-model" in err[-1]
    assert not out.exists()


@pytest.mark.slow  # the module's server takes ~15 s to start
def test_recursive_generation_one_from_the_served_model(server, model_dir, tmp_path):
    """Generation 1's corpus of the self-consuming loop, requested from the server with the run's tokenizer."""
    from synthmix.trainer.config import SamplingConfig, load_config
    from synthmix.trainer.experiments.recursive import Experiment, _sample_corpus

    config = {
        "output_dir": str(tmp_path / "exp"),
        "tokenizer": {"name": str(model_dir)},
        "model": {"name": str(model_dir)},
        "data": {"cache_dir": str(tmp_path / "cache"), "sources": [{"name": "docs", "builtin": "python_docs"}]},
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(config))
    sampling = SamplingConfig(max_new_tokens=5, top_p=0.9)
    endpoint = Endpoint(server, str(model_dir))
    exp = Experiment(load_config(path), tmp_path / "exp", 2, "replace", 0.2, 3, sampling, served=endpoint)
    corpus = tmp_path / "exp" / "gen-1" / "synthetic.jsonl"
    _sample_corpus(exp, 1, TEXTS, corpus)
    lines = read_jsonl(corpus)
    assert len(lines) == 3 and {line["backend"] for line in lines} == {"openai"}
    assert lines[0]["sampling"] == {"temperature": 1.0, "top_p": 0.9, "max_tokens": 5, "seed": 1000}
    assert lines[0]["prompt_source"]["unit"] == "tokens" and lines[0]["prompt_source"]["length"] == 16


# ---------------------------------------------------------------------------------------------- retries
class Scripted(http.server.ThreadingHTTPServer):
    """Answers POSTs with the scripted statuses in turn (then 200), counting requests and those in flight."""

    daemon_threads = True

    def __init__(self, statuses: list[int], delay: float = 0.0) -> None:
        self.statuses, self.delay = list(statuses), delay
        self.requests: list[dict] = []
        self.in_flight = self.most_in_flight = 0
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), ScriptedHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class ScriptedHandler(http.server.BaseHTTPRequestHandler):
    server: Scripted

    def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.requests.append({"body": body, "authorization": self.headers.get("Authorization")})
            status = self.server.statuses.pop(0) if self.server.statuses else 200
            self.server.in_flight += 1
            self.server.most_in_flight = max(self.server.most_in_flight, self.server.in_flight)
        time.sleep(self.server.delay)
        with self.server.lock:
            self.server.in_flight -= 1
        if status == 200:
            answer = {"choices": [{"text": " and more", "finish_reason": "length"}],
                      "usage": {"prompt_tokens": 3, "completion_tokens": 2}}  # fmt: skip
        else:
            answer = {"error": {"message": f"scripted {status}"}}
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == 429:
            self.send_header("Retry-After", "0")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def scripted() -> Iterator[callable]:
    servers: list[Scripted] = []

    def start(statuses: list[int], delay: float = 0.0) -> Scripted:
        server = Scripted(statuses, delay)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def served(url: str, out: Path, n: int, **endpoint: object) -> object:
    prompts = Prompts("texts", TEXTS, length=2)
    settings = {"backoff": 0.01, "max_backoff": 0.05, "max_attempts": 3, **endpoint}
    return generate_served(Endpoint(url, "m", **settings), prompts, n, ServedSampling(max_tokens=2), out)


def test_429_and_5xx_are_retried_with_backoff(scripted, tmp_path):
    server = scripted([429, 503])
    totals = served(server.url, tmp_path / "out.jsonl", 1, api_key="secret")
    assert totals.written == 1 and len(server.requests) == 3  # two failures, then the answer
    assert {r["authorization"] for r in server.requests} == {"Bearer secret"}
    (line,) = read_jsonl(tmp_path / "out.jsonl")
    assert line["text"].endswith(" and more") and line["usage"] == {"prompt_tokens": 3, "completion_tokens": 2}
    assert "secret" not in (tmp_path / "out.jsonl").read_text() + data_card_path(tmp_path / "out.jsonl").read_text()


def test_giving_up_names_the_url_and_the_status(scripted, tmp_path):
    server = scripted([500, 502, 503, 503])
    with pytest.raises(ServedError, match=r"/v1/completions: HTTP 503: scripted 503 \(gave up after 3 attempts\)"):
        served(server.url, tmp_path / "out.jsonl", 1)
    assert len(server.requests) == 3 and not (tmp_path / "out.jsonl").exists()
    with pytest.raises(ServedError, match=r"cannot connect: .*\(gave up after 2 attempts\)"):
        served(f"http://127.0.0.1:{free_port()}", tmp_path / "out.jsonl", 1, max_attempts=2)


def test_other_4xx_fail_without_retrying(scripted, tmp_path):
    server = scripted([404])
    with pytest.raises(ServedError, match=r"/v1/completions: HTTP 404: scripted 404$"):
        served(server.url, tmp_path / "out.jsonl", 1)
    assert len(server.requests) == 1


def test_lines_finished_before_a_failure_are_kept_and_the_rest_resumed(scripted, tmp_path):
    out = tmp_path / "out.jsonl"
    failing = scripted([200, 200, 200, 400])
    with pytest.raises(ServedError, match="HTTP 400"):
        served(failing.url, out, 6, concurrency=1)
    assert [line["sample"] for line in read_jsonl(out)] == [0, 1, 2] and not data_card_path(out).exists()
    moved = scripted([])  # the same model at another URL: resumed, not refused
    totals = served(moved.url, out, 6)
    assert totals.written == 3 and len(moved.requests) == 3 and totals.complete
    assert [line["sample"] for line in read_jsonl(out)] == list(range(6))
    assert "| lines | 6 |" in data_card_path(out).read_text()


def test_at_most_concurrency_requests_are_in_flight(scripted, tmp_path):
    server = scripted([], delay=0.1)
    totals = served(server.url, tmp_path / "out.jsonl", 8, concurrency=3)
    assert totals.lines == 8 and server.most_in_flight == 3
    assert sorted(r["body"]["seed"] for r in server.requests) == sorted({r["body"]["seed"] for r in server.requests})


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--base-url", "http://x"], "error: --base-url: only with --backend openai"),
        (["--backend", "openai"], "error: --base-url: required with --backend openai"),
        (["--backend", "openai", "--base-url", "http://x", "--top-k", "5"], "error: --top-k: the OpenAI API has no"),
        (["--backend", "openai", "--base-url", "ftp://x"], "error: --base-url: an http:// or https:// URL expected"),
        (["--backend", "openai", "--base-url", "http://x", "--api-key-env", "SYNTHMIX_NO_SUCH_VARIABLE"],
         "error: --api-key-env: the environment variable SYNTHMIX_NO_SUCH_VARIABLE is not set"),
        (["--messages-field", "m"], "error: --messages-field: chat prompts need --backend openai"),
    ],
)  # fmt: skip
def test_flag_errors_are_one_line(prompts_file, tmp_path, capsys, extra, expected):
    args = ["generate", "--model", "m", "--prompts", str(prompts_file), "--out", str(tmp_path / "o.jsonl"), *extra]
    assert synthmix(args) == 2
    assert capsys.readouterr().err.strip().startswith(expected)
