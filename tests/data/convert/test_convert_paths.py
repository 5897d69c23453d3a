"""``convert`` through the real CLI in subprocesses: the audio paths it writes resolve from any directory, as
LLaMA-Factory and ``precompute`` resolve them, whatever directory convert ran in; outputs follow the umask
(issue 25 items 4 and 12)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import corpus_fixtures as cf  # noqa: E402
from convert_cli import CLI, ENV, convert, shard_audios  # noqa: E402
from lf_runs import two_at_a_time  # noqa: E402


def resolves_like_llamafactory(entry: str, dataset_dir: Path) -> bool:
    """LLaMA-Factory joins ``media_dir`` (default: ``dataset_dir``) to a relative path; an absolute one stays."""
    return os.path.isfile(os.path.join(dataset_dir, entry.split("#t=")[0]))


# ------------------------------------------------------------------------------------------------ item 4: paths
@pytest.mark.parametrize("style", ["auto", "absolute", "relative"])
def test_corpus_from_a_relative_input_resolves_from_anywhere(tmp_path: Path, style: str) -> None:
    work = tmp_path / "work"
    cf.librispeech(work / "src")
    proc = convert("src/LibriSpeech", "--out-dir", "data", "--name", "libri", "--paths", style, cwd=work)
    assert proc.returncode == 0, proc.stderr
    audios = shard_audios(work / "data")
    assert sorted(audios) == ["libri_dev-clean", "libri_train-clean-100"]
    entries = [entry for group in audios.values() for entry in group]
    assert len(entries) == 4
    if style == "relative":
        assert all(entry.startswith("../src/LibriSpeech/") for entry in entries)
    else:  # the audio is outside --out-dir: absolute, never relative to the directory convert ran in
        assert all(entry.startswith(str(work / "src" / "LibriSpeech") + "/") for entry in entries)
    dataset_dir = work / "data"
    if style == "relative":  # relative entries move with the data
        dataset_dir = work.rename(tmp_path / "moved") / "data"
    assert all(resolves_like_llamafactory(entry, dataset_dir) for entry in entries)


# LLaMA-Factory's own lookup: dataset_info entry → DatasetAttr → the sharegpt converter's media resolution
RESOLVE_WITH_LLAMAFACTORY = """
import json, os, sys
from llamafactory.data.converter import get_dataset_converter
from llamafactory.data.parser import get_dataset_list
from llamafactory.hparams import DataArguments

args = DataArguments(dataset_dir=sys.argv[1], dataset=sys.argv[2])
for attr in get_dataset_list(args.dataset, args.dataset_dir):
    converter = get_dataset_converter(attr.formatting, attr, args)
    folder = os.path.join(args.dataset_dir, attr.dataset_name)
    for shard in sorted(os.listdir(folder)):
        for line in open(os.path.join(folder, shard), encoding="utf-8"):
            print(json.dumps(converter(json.loads(line))["_audios"]))
"""


@pytest.mark.parametrize(("style", "prefix"), [("auto", "LibriSpeech/"), ("absolute", "{src}/LibriSpeech/")])
def test_corpus_under_the_output_folder(tmp_path: Path, style: str, prefix: str) -> None:
    cf.librispeech(tmp_path / "src")  # --out-dir src holds the corpus: auto writes relative, absolute does not
    proc = convert("src/LibriSpeech", "--out-dir", "src", "--name", "libri", "--paths", style, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    entries = [entry for group in shard_audios(tmp_path / "src").values() for entry in group]
    assert len(entries) == 4
    assert all(entry.startswith(prefix.format(src=tmp_path / "src")) for entry in entries), entries
    assert all(resolves_like_llamafactory(entry, tmp_path / "src") for entry in entries)


PATH_STYLES = ("auto", "relative")


def resolved_from_elsewhere(root: Path, style: str) -> subprocess.CompletedProcess[str]:
    """A LibriSpeech miniature converted in ``root/work`` with ``--paths style``, then resolved by LLaMA-Factory's
    converter from ``root/elsewhere``."""
    work, elsewhere = root / "work", root / "elsewhere"
    cf.librispeech(work / "src")
    elsewhere.mkdir()
    proc = convert("src/LibriSpeech", "--out-dir", "data", "--name", "libri", "--paths", style, cwd=work)
    assert proc.returncode == 0, proc.stderr
    names = "libri_dev-clean,libri_train-clean-100"
    command = [sys.executable, "-c", RESOLVE_WITH_LLAMAFACTORY, str(work / "data"), names]
    return subprocess.run(command, cwd=elsewhere, env=ENV, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def resolved_by_style(tmp_path_factory) -> dict[str, subprocess.CompletedProcess[str]]:
    """style -> the LLaMA-Factory child's run; the two styles side by side (each child imports LLaMA-Factory)."""
    roots = [tmp_path_factory.mktemp(f"paths_{style}") for style in PATH_STYLES]
    return dict(zip(PATH_STYLES, two_at_a_time(resolved_from_elsewhere, roots, PATH_STYLES)))


@pytest.mark.slow
@pytest.mark.parametrize("style", PATH_STYLES)
def test_llamafactory_finds_every_clip_from_another_directory(resolved_by_style, style: str) -> None:
    found = resolved_by_style[style]
    assert found.returncode == 0, found.stderr
    audios = [path for line in found.stdout.splitlines() for path in json.loads(line)]
    assert len(audios) == 4 and all(os.path.isabs(path) and os.path.isfile(path) for path in audios), audios


@pytest.mark.slow
def test_precompute_from_another_directory_finds_every_clip(tmp_path: Path, tiny_checkpoint) -> None:
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    cf.librispeech(work / "src")
    elsewhere.mkdir()
    assert convert("src/LibriSpeech", "--out-dir", "data", "--name", "libri", cwd=work).returncode == 0
    command = [*CLI, "precompute", "--model", tiny_checkpoint.path, "--dataset-dir", str(work / "data")]
    command += ["--dataset", "libri_dev-clean,libri_train-clean-100", "--cache", "cache", "--device", "cpu"]
    proc = subprocess.run(
        [*command, "--no-progress"], cwd=elsewhere, env=ENV, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    assert "4 computed, 0 skipped (already cached), 0 failed" in proc.stdout


def test_relative_audio_folder_converts(tmp_path: Path) -> None:
    for name in "ab":
        cf.tone(tmp_path / "clips" / f"{name}.wav", 0.5)
        (tmp_path / "clips" / f"{name}.txt").write_text(f"hello {name}\n", encoding="utf-8")
    proc = convert("clips", "--out-dir", "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("converted 2/2 rows") and "missing_audio" not in proc.stderr
    rows = json.loads((tmp_path / "out" / "clips.json").read_text(encoding="utf-8"))
    assert [row["audios"] for row in rows] == [[str(tmp_path / "clips" / f"{n}.wav")] for n in "ab"]
    inside = convert("clips", "--out-dir", "clips", cwd=tmp_path)  # audio under --out-dir: relative to it
    assert inside.returncode == 0, inside.stderr
    rows = json.loads((tmp_path / "clips" / "clips.json").read_text(encoding="utf-8"))
    assert [row["audios"] for row in rows] == [["a.wav"], ["b.wav"]]


# ------------------------------------------------------------------------------------------------ item 12: modes
@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640)], ids=["022", "027"])
def test_outputs_follow_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    cf.librispeech(tmp_path / "src")
    for name in "ab":
        cf.tone(tmp_path / "clips" / f"{name}.wav", 0.5)
        (tmp_path / "clips" / f"{name}.txt").write_text(f"hello {name}\n", encoding="utf-8")
    out = tmp_path / "out"
    for source in ("src/LibriSpeech", "clips"):
        proc = convert(source, "--out-dir", out, "--workers", "1", cwd=tmp_path, umask=umask)
        assert proc.returncode == 0, proc.stderr
    files = [path for path in out.rglob("*") if path.is_file()]
    names = {path.name for path in files}
    assert {"dataset_info.json", "clips.json", "clips.report.json", "librispeech.report.json"} <= names
    assert {path.name: oct(stat.S_IMODE(path.stat().st_mode)) for path in files} == {p.name: oct(mode) for p in files}
