"""Screenshot an HTML report with headless Chromium, to look at it (or attach it) without a browser.

    python scripts/screenshot_report.py runs/demo/report.html report.png [--width 1400]

The page is rendered in a tall window, then the empty band below the content is cropped away.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHROMIUM_NAMES = ["chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"]


def find_chromium() -> str | None:
    """The first Chromium-family binary on PATH, or None."""
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


def crop_bottom(png: Path, margin: int = 24) -> None:
    """Cut the rows below the last one that differs from the page background (the bottom-left pixel)."""
    from PIL import Image, ImageChops  # Pillow comes with matplotlib

    with Image.open(png) as image:
        image = image.convert("RGB")
    background = Image.new("RGB", image.size, image.getpixel((0, image.height - 1)))
    box = ImageChops.difference(image, background).getbbox()
    if box and box[3] + margin < image.height:
        image.crop((0, 0, image.width, box[3] + margin)).save(png)


def screenshot(report: Path, out: Path, width: int = 1400, height: int = 12000, chromium: str | None = None) -> Path:
    """Render `report` to the PNG `out`; raise FileNotFoundError if no Chromium is installed."""
    chromium = chromium or find_chromium()
    if chromium is None:
        raise FileNotFoundError(f"no Chromium found on PATH (looked for {', '.join(CHROMIUM_NAMES)})")
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    # A throw-away profile, so that two screenshots at once do not fight over one profile lock.
    with tempfile.TemporaryDirectory(prefix="synthmix-chromium-") as profile:
        command = [
            chromium, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars", "--no-first-run",
            f"--user-data-dir={profile}", f"--screenshot={out}", f"--window-size={width},{height}",
            report.resolve().as_uri(),
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if done.returncode != 0 or not out.is_file():
        raise RuntimeError(f"{chromium} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    crop_bottom(out)
    return out


def main(argv: list[str] | None = None) -> int:
    """CLI: screenshot REPORT.html into OUT.png and print its path."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, metavar="REPORT.html")
    parser.add_argument("out", type=Path, metavar="OUT.png")
    parser.add_argument("--width", type=int, default=1400, help="window width in pixels (default 1400)")
    parser.add_argument("--height", type=int, default=12000, help="window height before cropping (default 12000)")
    parser.add_argument("--chromium", help="Chromium binary to use (default: the first found on PATH)")
    args = parser.parse_args(argv)
    if not args.report.is_file():
        print(f"error: {args.report}: file not found", file=sys.stderr)
        return 2
    try:
        print(screenshot(args.report, args.out, args.width, args.height, args.chromium))
    except FileNotFoundError as e:
        print(f"error: {e}; install it, e.g. `apt-get install chromium`", file=sys.stderr)
        return 2
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
