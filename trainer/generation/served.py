"""A synthetic corpus sampled from a served model through the OpenAI-compatible HTTP API (vLLM, TGI, llama.cpp,
`transformers serve`, OpenAI itself): `synthmix generate --backend openai`.

Text prompts go to `/v1/completions`, chats to `/v1/chat/completions`. Requests run `Endpoint.concurrency` at a
time in threads (standard library HTTP: no client library is needed); 429, 408, 5xx, timeouts and broken
connections are retried with exponential backoff and jitter (a `Retry-After` header is honoured, up to the
backoff cap), any other 4xx fails at once with the server's message.

The output is append-only and resumable. Sample k (0 <= k < n) has the id `s{seed}-p{index}-n{k}` (seed, the
prompt's index in the prompts file, the sample number), and the prompt of sample k does not depend on n, so a
second call with a larger n sends only the missing samples. Each finished request is appended as one line and
flushed at once: an interrupted call loses at most the requests in flight. On resume a torn last line (a crash
mid-write) is dropped, never read; lines written with other settings (backend, model, sampling, prompt file or
prompt length) are refused: a corpus never mixes settings. When every sample 0..n-1 is there, the file is
rewritten in sample order (an atomic rename), so a finished corpus does not depend on the order requests
finished in, and its data card (NAME.card.md) is written with the totals.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import http.client
import itertools
import json
import os
import queue
import random
import re
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from tqdm.auto import tqdm

from synthmix.files import atomic_file, disk_full_is_an_error, write_text
from synthmix.trainer.config import SamplingConfig
from synthmix.trainer.generation.prompts import seeded_choice
from synthmix.trainer.generation.sampling import GenerationError
from synthmix.trainer.reporting.cards import data_card, data_card_path

BACKEND = "openai"
RETRIED_STATUSES = frozenset({408, 409, 425, 429})
"""Besides every 5xx: request timeout, conflict, too early, too many requests."""
_WORD = re.compile(r"\S+")


class ServedError(GenerationError):
    """A server that refused, or kept failing, a request: one line naming the URL and the status."""


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """Where the served model answers and how requests to it are made."""

    base_url: str
    """The API root, e.g. http://127.0.0.1:8000/v1 (a URL without a path gets /v1)."""
    model: str
    """The `model` field of every request: the name the server knows the model by."""
    api_key: str | None = dataclasses.field(default=None, repr=False)
    """Sent as `Authorization: Bearer KEY`; never written anywhere."""
    concurrency: int = 8
    """Requests in flight at once."""
    timeout: float = 300.0
    """Seconds one request may take."""
    max_attempts: int = 6
    """Attempts per request, the first included, before giving up."""
    backoff: float = 1.0
    """Seconds before the first retry; doubled for each further one, with jitter."""
    max_backoff: float = 60.0
    """The longest wait between two attempts (a larger Retry-After is cut to it)."""

    def __post_init__(self) -> None:
        parsed = urllib.parse.urlsplit(self.base_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise GenerationError(f"--base-url: an http:// or https:// URL expected, got {self.base_url!r}")
        if parsed.path in ("", "/"):
            object.__setattr__(self, "base_url", self.base_url.rstrip("/") + "/v1")
        else:
            object.__setattr__(self, "base_url", self.base_url.rstrip("/"))
        for name, value, least in (("concurrency", self.concurrency, 1), ("max_attempts", self.max_attempts, 1)):
            if value < least:
                raise GenerationError(f"--{name.replace('_', '-')}: must be at least {least}, got {value}")
        if self.timeout <= 0:
            raise GenerationError(f"--timeout: must be positive, got {self.timeout}")


@dataclasses.dataclass(frozen=True)
class ServedSampling:
    """The sampling settings the OpenAI API has (no top-k, no beams). Every request also gets its own seed,
    derived from `seed` and the sample number (see `request_seed`)."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 128
    seed: int = 0

    @classmethod
    def from_sampling(cls, sampling: SamplingConfig) -> ServedSampling:
        """The served equivalent of `sampling` (greedy is temperature 0); settings the API lacks are errors."""
        if sampling.top_k != 0:
            raise GenerationError(f"--top-k: the OpenAI API has no top-k; leave it at 0 (got {sampling.top_k})")
        if sampling.num_beams != 1:
            raise GenerationError(f"--num-beams: the OpenAI API has no beam search (got {sampling.num_beams})")
        temperature = 0.0 if sampling.greedy else sampling.temperature
        return cls(temperature, sampling.top_p, sampling.max_new_tokens, sampling.seed)


@dataclasses.dataclass(frozen=True)
class Prompts:
    """What the prompts are: texts cut to their first `length` words or tokens, or chats cut after their last
    user turn."""

    file: str
    """The prompts file, as given (recorded in every line)."""
    items: Sequence[Any]
    """Texts, or chats (lists of {role, content}) when `chat`."""
    field: str = "text"
    chat: bool = False
    length: int = 16
    """Words (no tokenizer) or tokens of `tokenizer` per text prompt; unused for chats."""
    tokenizer: Any = None
    tokenizer_name: str | None = None

    @property
    def source(self) -> dict[str, Any]:
        """How every prompt was made: the part of a line's `prompt_source` that is the same on every line."""
        if self.chat:
            return {"file": self.file, "field": self.field, "unit": "conversation", "length": None, "tokenizer": None}
        unit = "tokens" if self.tokenizer is not None else "words"
        return {"file": self.file, "field": self.field, "unit": unit, "length": self.length,
                "tokenizer": self.tokenizer_name}  # fmt: skip

    def prompt(self, index: int) -> str | list[dict[str, str]] | None:
        """The prompt made from item `index`, or None when the item cannot make one."""
        item = self.items[index]
        if self.chat:
            users = [i for i, turn in enumerate(item) if turn.get("role") == "user"]
            return [dict(turn) for turn in item[: users[-1] + 1]] if users else None
        if self.tokenizer is None:
            words = list(itertools.islice(_WORD.finditer(item), self.length + 1))
            return item[: words[self.length - 1].end()] if len(words) > self.length else None
        return _token_prefix(self.tokenizer, item, self.length)


@dataclasses.dataclass
class Totals:
    """What a corpus file holds after a call, and what the call added."""

    lines: int = 0
    written: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reasons: dict[str, int] = dataclasses.field(default_factory=dict)
    complete: bool = False


def request_seed(seed: int, sample: int) -> int:
    """The `seed` of sample k's request: a 31-bit hash of (seed, k), so repeated prompts get different samples
    where the server honours seeds (and the same ones on every call)."""
    digest = hashlib.sha256(f"synthmix:{seed}:{sample}".encode()).digest()
    return int.from_bytes(digest[:4], "big") >> 1


def sample_id(seed: int, index: int, sample: int) -> str:
    return f"s{seed}-p{index}-n{sample}"


def generate_served(
    endpoint: Endpoint, prompts: Prompts, n: int, sampling: ServedSampling, out_path: Path, progress: bool = False
) -> Totals:
    """Make `out_path` hold samples 0..n-1 (see the module docstring): append the missing ones, then sort the
    file and write its data card. Returns the file's totals; raises ServedError when a request fails for good
    (the lines finished before it are kept)."""
    if n < 1:
        raise GenerationError(f"--n: must be at least 1, got {n}")
    if not prompts.chat and prompts.length < 1:
        raise GenerationError(f"--prompt-tokens: must be at least 1, got {prompts.length}")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    identity = _identity(endpoint, sampling, prompts.source)
    existed = out_path.exists()
    try:
        with _locked(out_path) as handle:
            totals, written = _resume(endpoint, prompts, n, sampling, out_path, handle, identity, progress)
    finally:  # a call that failed before its first line leaves no empty file behind
        if not existed and out_path.exists() and out_path.stat().st_size == 0:
            out_path.unlink()
    totals.written = written
    if totals.complete:
        card = data_card(
            totals.lines, f"{endpoint.model} at {endpoint.base_url}", prompts.file, prompts.length,
            dataclasses.asdict(sampling), out_path.name, backend=BACKEND,
            prompt_unit=prompts.source["unit"], usage=_usage_totals(totals),
        )  # fmt: skip
        write_text(data_card_path(out_path), card)
    return totals


def _resume(
    endpoint: Endpoint, prompts: Prompts, n: int, sampling: ServedSampling, out_path: Path, handle: _Handle,
    identity: dict[str, Any], progress: bool,
) -> tuple[Totals, int]:  # fmt: skip
    """Check what the file holds against this call, then request the missing samples; (totals, lines written)."""
    existing = _read_existing(handle, out_path)
    for line_number, line in existing.values():
        _check_provenance(out_path, line_number, line, identity)
    largest = max((line["sample"] for _, line in existing.values()), default=-1)
    plan = _choose(prompts, max(n, largest + 1), sampling.seed)
    for line_number, line in existing.values():
        index = plan[line["sample"]][0]
        if line["id"] != sample_id(sampling.seed, index, line["sample"]):
            raise GenerationError(
                f"{out_path}:{line_number}: id {line['id']} is not this call's sample {line['sample']} "
                f"(prompt {index}): the prompts file changed since; write to another --out"
            )
    missing = [(k, *plan[k]) for k in range(n) if sample_id(sampling.seed, plan[k][0], k) not in existing]
    written = _request_all(endpoint, prompts, sampling, missing, handle, n - len(missing), n, progress)
    return _finish(out_path, handle, n), written


def _identity(endpoint: Endpoint, sampling: ServedSampling, source: dict[str, Any]) -> dict[str, Any]:
    """What every line of one corpus must share (the URL may change: a server moved is the same model)."""
    return {"backend": BACKEND, "model": endpoint.model, "sampling": dataclasses.asdict(sampling),
            "prompt_source": source}  # fmt: skip


def _check_provenance(out: Path, line_number: int, line: dict[str, Any], identity: dict[str, Any]) -> None:
    found = {
        "backend": line.get("backend"),
        "model": line.get("model"),
        "sampling": line.get("sampling"),
        "prompt_source": {k: v for k, v in (line.get("prompt_source") or {}).items() if k != "index"},
    }
    for key, wanted in identity.items():
        if found[key] != wanted:
            raise GenerationError(
                f"{out}:{line_number}: written with {key} {json.dumps(found[key])}, this call has "
                f"{json.dumps(wanted)}; a corpus never mixes settings: write to another --out"
            )


def _choose(prompts: Prompts, n: int, seed: int) -> list[tuple[int, Any]]:
    """(index, prompt) of samples 0..n-1: items in the order of a seeded shuffle, those that make no prompt
    skipped, the list reused from its start when fewer than n qualify (the hf backend's choice of texts, so the
    same tokenizer and seed pick the same texts). Sample k's prompt does not depend on n."""
    chosen = seeded_choice(len(prompts.items), n, seed, lambda indices: [prompts.prompt(i) for i in indices])
    if not chosen:
        if prompts.chat:
            raise GenerationError(f"{prompts.file}: none of the {len(prompts.items)} conversations has a user turn")
        unit = prompts.source["unit"]
        raise GenerationError(
            f"{prompts.file}: none of the {len(prompts.items)} texts has more than --prompt-tokens={prompts.length} "
            f"{unit}"
        )
    return chosen


def _token_prefix(tokenizer: Any, text: str, length: int) -> str | None:
    """The text up to the end of its `length`-th token (an exact prefix of the real text where the tokenizer
    reports character offsets; else the tokens decoded), or None when it has no more tokens than that."""
    fast = getattr(tokenizer, "is_fast", False)
    encoded = tokenizer(
        text, add_special_tokens=False, truncation=True, max_length=length + 1, return_offsets_mapping=fast
    )
    ids = encoded["input_ids"]
    if len(ids) <= length:
        return None
    if fast:
        return text[: encoded["offset_mapping"][length - 1][1]]
    return tokenizer.decode(ids[:length], skip_special_tokens=True)


# ---------------------------------------------------------------------------------------------- the file
@dataclasses.dataclass
class _Handle:
    file: IO[bytes]
    path: Path


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[_Handle]:
    """The output file opened for appending, under an exclusive lock (a second writer is an error)."""
    with disk_full_is_an_error(path), open(path, "a+b") as file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise GenerationError(f"{path}: another process is writing it (a synthmix generate running?)") from None
        yield _Handle(file, path)


def _read_existing(handle: _Handle, out: Path) -> dict[str, tuple[int, dict[str, Any]]]:
    """id -> (line number, line) of what the file holds. A torn last line (no newline at its end, or not JSON:
    a crash mid-write) is cut off the file, never read; any other line that is not one of ours is an error."""
    handle.file.seek(0)
    *complete, tail = handle.file.read().split(b"\n")
    lines: dict[str, tuple[int, dict[str, Any]]] = {}
    good_end = 0
    for number, raw in enumerate(complete, start=1):
        line = _parse(raw, out, number)
        if line is None:
            if number < len(complete):
                raise GenerationError(f"{out}:{number}: invalid JSON in the middle of the file; not resuming it")
            tail = raw + b"\n" + tail  # an unreadable last line: torn as well
            break
        if line["id"] in lines:
            raise GenerationError(f"{out}:{number}: id {line['id']} is already on line {lines[line['id']][0]}")
        lines[line["id"]] = (number, line)
        good_end += len(raw) + 1
    if tail:
        print(f"{out}: dropped a torn last line ({len(tail)} bytes) left by an interrupted call", file=sys.stderr)
        with disk_full_is_an_error(out):
            handle.file.truncate(good_end)
            handle.file.flush()
            os.fsync(handle.file.fileno())
    handle.file.seek(0, os.SEEK_END)
    return lines


def _parse(raw: bytes, out: Path, number: int) -> dict[str, Any] | None:
    """A line of ours; None when it is not JSON (torn); an error when it is JSON but not ours."""
    try:
        line = json.loads(raw)
    except ValueError:
        return None
    ours = isinstance(line, dict) and isinstance(line.get("id"), str) and isinstance(line.get("sample"), int)
    if not ours or line["sample"] < 0:
        raise GenerationError(
            f"{out}:{number}: not a line of synthmix generate --backend openai (no id and sample); "
            "write to another --out"
        )
    return line


def _finish(out: Path, handle: _Handle, n: int) -> Totals:
    """The file's totals; when samples 0..n-1 are all there, the file rewritten in sample order."""
    handle.file.seek(0)
    lines = [json.loads(raw) for raw in handle.file.read().splitlines() if raw.strip()]
    totals = Totals(lines=len(lines))
    reasons: Counter[str] = Counter()
    for line in lines:
        usage = line.get("usage") or {}
        totals.prompt_tokens += usage.get("prompt_tokens") or 0
        totals.completion_tokens += usage.get("completion_tokens") or 0
        reasons[str(line.get("finish_reason"))] += 1
    totals.finish_reasons = dict(sorted(reasons.items()))
    totals.complete = {line["sample"] for line in lines} >= set(range(n))
    ordered = sorted(lines, key=lambda line: line["sample"])
    if totals.complete and ordered != lines:
        with atomic_file(out) as rewritten:
            rewritten.writelines(json.dumps(line, ensure_ascii=False) + "\n" for line in ordered)
    return totals


def _usage_totals(totals: Totals) -> dict[str, Any]:
    return {
        "lines": totals.lines,
        "prompt_tokens": totals.prompt_tokens,
        "completion_tokens": totals.completion_tokens,
        "finish_reasons": ", ".join(f"{k} {v}" for k, v in totals.finish_reasons.items()),
    }


# ---------------------------------------------------------------------------------------------- the requests
def _request_all(
    endpoint: Endpoint, prompts: Prompts, sampling: ServedSampling, missing: list[tuple[int, int, Any]],
    handle: _Handle, done: int, n: int, progress: bool,
) -> int:  # fmt: skip
    """Send the missing samples' requests, `endpoint.concurrency` at a time, appending each line as it comes.
    Daemon threads: a fatal error or Ctrl-C returns at once, leaving the requests in flight unwritten."""
    if not missing:
        return 0
    client = _Client(endpoint)
    tasks: queue.SimpleQueue[tuple[int, int, Any]] = queue.SimpleQueue()
    for task in missing:
        tasks.put(task)
    results: queue.SimpleQueue[tuple[dict[str, Any] | None, BaseException | None]] = queue.SimpleQueue()

    def work() -> None:
        while not client.stop.is_set():
            try:
                sample, index, prompt = tasks.get_nowait()
            except queue.Empty:
                return
            try:
                results.put((_line(client, prompts, sampling, sample, index, prompt), None))
            except BaseException as err:  # noqa: BLE001 - handed to the main thread, which raises it
                results.put((None, err))

    for _ in range(min(endpoint.concurrency, len(missing))):
        threading.Thread(target=work, daemon=True, name="synthmix-request").start()
    bar = tqdm(total=n, initial=done, disable=not progress, unit="req", desc="requests", dynamic_ncols=True)
    start, generated, written = time.monotonic(), 0, 0
    try:
        for _ in missing:
            line, err = results.get()
            if err is not None:
                raise err
            assert line is not None
            with disk_full_is_an_error(handle.path):
                handle.file.write((json.dumps(line, ensure_ascii=False) + "\n").encode())
                handle.file.flush()
            written += 1
            generated += line["usage"]["completion_tokens"] or 0
            bar.update(1)
            bar.set_postfix(tok_s=f"{generated / max(time.monotonic() - start, 1e-9):.1f}", refresh=False)
        with disk_full_is_an_error(handle.path):
            os.fsync(handle.file.fileno())
    finally:
        client.stop.set()
        bar.close()
    return written


def _line(client: _Client, prompts: Prompts, sampling: ServedSampling, sample: int, index: int, prompt: Any) -> dict:
    """Sample k's request, and its line of the corpus."""
    seed = request_seed(sampling.seed, sample)
    payload: dict[str, Any] = {"model": client.endpoint.model}
    payload["messages" if prompts.chat else "prompt"] = prompt
    payload.update(max_tokens=sampling.max_tokens, temperature=sampling.temperature, top_p=sampling.top_p, seed=seed)
    path = "/chat/completions" if prompts.chat else "/completions"
    answer = client.post(path, payload)
    url = client.endpoint.base_url + path
    try:
        choice = answer["choices"][0]
        completion = choice["message"]["content"] if prompts.chat else choice["text"]
    except (KeyError, IndexError, TypeError):
        raise ServedError(f"{url}: the answer has no completion: {json.dumps(answer)[:200]}") from None
    usage = answer.get("usage") or {}
    content: dict[str, Any] = (
        {"messages": [*prompt, {"role": "assistant", "content": completion or ""}]}
        if prompts.chat
        else {"text": prompt + (completion or "")}
    )
    return {
        "id": sample_id(sampling.seed, index, sample),
        "sample": sample,
        **content,
        "backend": BACKEND,
        "base_url": client.endpoint.base_url,
        "model": client.endpoint.model,
        "sampling": dataclasses.asdict(sampling),
        "request_seed": seed,
        "prompt_source": {**prompts.source, "index": index},
        "usage": {"prompt_tokens": usage.get("prompt_tokens"), "completion_tokens": usage.get("completion_tokens")},
        "finish_reason": choice.get("finish_reason"),
    }


class _Client:
    """POSTs JSON to the endpoint with retries; `stop` ends the waits between attempts early."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.stop = threading.Event()
        self.jitter = random.Random()
        self.headers = {"Content-Type": "application/json", "Accept": "application/json", "User-Agent": "synthmix"}
        if endpoint.api_key:
            self.headers["Authorization"] = f"Bearer {endpoint.api_key}"

    def post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        url = self.endpoint.base_url + path
        body = json.dumps(payload).encode()
        attempts = self.endpoint.max_attempts
        for attempt in range(1, attempts + 1):
            retry_after = None
            request = urllib.request.Request(url, data=body, headers=self.headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.endpoint.timeout) as response:
                    raw = response.read()
            except urllib.error.HTTPError as err:
                message = _server_message(err)
                if not (err.code in RETRIED_STATUSES or err.code >= 500):
                    raise ServedError(f"{url}: HTTP {err.code}: {message}") from None
                reason, retry_after = f"HTTP {err.code}: {message}", _seconds(err.headers.get("Retry-After"))
            except TimeoutError:
                reason = f"no answer within {self.endpoint.timeout:g} s"
            except urllib.error.URLError as err:
                late = isinstance(err.reason, TimeoutError)
                reason = f"no answer within {self.endpoint.timeout:g} s" if late else f"cannot connect: {err.reason}"
            except (ConnectionError, http.client.HTTPException, OSError) as err:
                reason = f"connection failed: {type(err).__name__}: {err}"
            else:
                try:
                    answer = json.loads(raw)
                except ValueError:
                    raise ServedError(f"{url}: the answer is not JSON: {raw[:200]!r}") from None
                if not isinstance(answer, dict):
                    raise ServedError(f"{url}: the answer is not a JSON object: {raw[:200]!r}")
                return answer
            if attempt == attempts:
                raise ServedError(f"{url}: {reason} (gave up after {attempts} attempts)")
            if self.stop.wait(self._delay(attempt, retry_after)):
                raise ServedError(f"{url}: stopped while retrying ({reason})")
        raise AssertionError("unreachable")

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Exponential backoff with equal jitter: half the doubled delay, plus a random part of the other half."""
        cap = min(self.endpoint.max_backoff, self.endpoint.backoff * 2 ** (attempt - 1))
        delay = cap / 2 + self.jitter.uniform(0, cap / 2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.endpoint.max_backoff))
        return delay


def _seconds(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: the backoff decides


def _server_message(err: urllib.error.HTTPError) -> str:
    """The error message in the body (OpenAI's error.message, FastAPI's detail), on one line."""
    try:
        raw = err.read()
    except OSError:
        raw = b""
    text = raw.decode("utf-8", "replace")
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict):
        found = body.get("error", body.get("detail", body.get("message")))
        if isinstance(found, dict):
            found = found.get("message", found)
        text = found if isinstance(found, str) else json.dumps(found)
    text = " ".join(text.split()) or (err.reason if isinstance(err.reason, str) else "") or "no message"
    return text[:300]


def load_tokenizer(name: str, trust_remote_code: bool = False) -> Any:
    """A tokenizer that counts prompt tokens, loading errors as one line."""
    from transformers import AutoTokenizer

    looks_local = name.startswith((".", "/", "~")) or name.count("/") > 1
    if looks_local and not Path(name).expanduser().exists():
        raise GenerationError(f"{name}: tokenizer folder does not exist")
    try:
        return AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        first = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise GenerationError(f"cannot load tokenizer {name!r}: {first}") from None
