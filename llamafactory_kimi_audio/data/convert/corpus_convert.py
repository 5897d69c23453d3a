"""``convert`` for public corpus layouts: streamed, parallel, sharded and resumable (issue 17).

The reader (``corpora/``) streams rows; they are taken in chunks of ``chunk_rows``; each chunk's recordings are
probed once each in a process pool; rows are checked (``corpus_rows``) and written as one shard per dataset
(``corpus_output``). Memory is bounded by the chunk size, not by the corpus. The state file is updated after each
chunk, so an interrupted run continues where it stopped (the reader re-reads, without probing, what was done).
The pool's workers end with this process, however it ends (``worker_pool``). Audio paths are written absolute, or
relative to ``out_dir`` (``dataset_files.output_path``); problems are counted under the subset of their row.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from ...fileio.dataset_info import DATASET_INFO
from ...fileio.textio import DataError, write_json
from ...models.special_tokens import DEFAULT_INSTRUCTION
from ...text import detect_language
from .corpora import Corpus, CorpusOptions, Layout
from .corpora.base import SubsetIssue
from .corpus_output import UNASSIGNED, ConvertState, ShardWriter, append_issues, first_issues
from .corpus_rows import Checked, ProbeResults, RowChecker, RowRules, sharegpt_row, start_probes
from .dataset_files import dataset_info_entry, merge_dataset_info, output_path  # one rule for every writer
from .names import printable, printable_issue
from .records import SourceRecord
from .validate import ERROR, WARNING, Issue
from .worker_pool import parent_bound_pool, terminate_on_sigterm


@dataclass
class CorpusResult:
    name: str
    layout: str
    out_dir: str
    lang: str
    instruction: str
    datasets: dict[str, dict[str, Any]]  # dataset → report of its subset
    rows_read: int
    rows_written: int
    files_written: int
    bytes_written: int
    resumed_from: int
    issues_path: str
    report_path: str
    dataset_info_path: str
    notes: list[str] = field(default_factory=list)
    examples: list[Issue] = field(default_factory=list)  # the first 3 issues of each reason
    issue_counts: dict[str, int] = field(default_factory=dict)  # reason → count (skipped and warnings)


def _fingerprint(input_path: str, layout: str, opts: Any) -> str:
    keys = ("subsets", "giga_text", "text_case", "max_duration", "drop_long", "keep_mojibake", "instruction", "lang")
    root = os.path.abspath(opts.root) if opts.root else None
    described = [os.path.abspath(input_path), layout, root, opts.path_style] + [str(getattr(opts, k)) for k in keys]
    return hashlib.sha256(json.dumps(described).encode()).hexdigest()[:16]


def _start_state(path: str, fingerprint: str, writer: ShardWriter, name: str, restart: bool) -> ConvertState:
    old = ConvertState.load(path)
    if old is not None and old.fingerprint == fingerprint and not old.complete and not restart:
        return old
    if old is not None:
        writer.clear([f"{name}_{subset}" for subset in old.subsets if subset != UNASSIGNED])
    return ConvertState(fingerprint)


def convert_corpus(input_path: str, out_dir: str, layout: Layout, base: str, opts: Any) -> CorpusResult:
    """Convert the corpus at ``base`` (``layout``) into sharded LLaMA-Factory data under ``out_dir``."""
    if opts.chunk_rows < 1 or opts.workers < 0:
        raise DataError(
            f"--chunk-rows {opts.chunk_rows} / --workers {opts.workers}: use --chunk-rows >= 1, --workers >= 0"
        )
    name = opts.name or layout.name
    corpus = layout.read(base, _corpus_options(opts, out_dir, name))
    writer = ShardWriter(out_dir, name)
    state_path = os.path.join(out_dir, f"{name}.convert-state.json")
    state = _start_state(state_path, _fingerprint(input_path, layout.name, opts), writer, name, opts.restart)
    resumed_from = state.chunks_done
    issues_path = os.path.join(out_dir, f"{name}.issues.jsonl")
    rules = RowRules(opts.max_duration, opts.drop_long, opts.keep_mojibake, opts.text_case)
    run = _Run(state, writer, RowChecker(rules), corpus, opts, name, out_dir, issues_path, state_path)
    workers = opts.workers or os.cpu_count() or 1
    # the workers die with this process (even on SIGKILL); SIGTERM stops here like ctrl-c, after the last whole chunk
    pool: Executor | None = parent_bound_pool(workers) if workers > 1 else None
    try:
        with terminate_on_sigterm():
            run.all_chunks(pool)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    state.complete = True
    state.save(state_path)
    writer.finish()
    return _finish(run, layout, resumed_from)


def _subset_of(item: SourceRecord | Issue) -> str:
    """The subset whose report counts ``item``'s problems (a kept row of no subset goes to ``train``)."""
    if isinstance(item, SourceRecord):
        return item.subset or "train"
    return (item.subset if isinstance(item, SubsetIssue) else None) or UNASSIGNED


def _filed(issue: Issue, subset: str) -> SubsetIssue:
    """``issue`` as written to the issues file: printable, with the subset it is counted under (None: no dataset)."""
    issue = printable_issue(issue)
    named = None if subset == UNASSIGNED else subset
    if isinstance(issue, SubsetIssue) and issue.subset == named:
        return issue
    return SubsetIssue(issue.reason, issue.file, issue.line, issue.message, issue.uid, subset=named)


def _audio_paths(chunk: list[SourceRecord | Issue]) -> list[str]:
    return [r.audio for r in chunk if isinstance(r, SourceRecord) and r.audio]


def _corpus_options(opts: Any, out_dir: str, name: str) -> CorpusOptions:
    root = os.path.abspath(opts.root) if opts.root else None
    return CorpusOptions(opts.subsets, opts.giga_text, opts.encoding, root, out_dir, name)


class _Run:
    def __init__(self, state, writer, checker, corpus: Corpus, opts, name, out_dir, issues_path, state_path) -> None:
        self.state, self.writer, self.checker, self.corpus, self.opts = state, writer, checker, corpus, opts
        self.name, self.out_dir, self.issues_path, self.state_path = name, out_dir, issues_path, state_path
        self.files = self.bytes = 0

    def all_chunks(self, pool: Executor | None) -> None:
        rows = self.corpus.rows
        bar = tqdm(desc=f"convert {self.corpus.layout}", unit="row", disable=None if self.opts.progress else True)
        if self.state.items_done:
            bar.set_postfix_str(f"resuming after {self.state.items_done} rows")
            rows = itertools.islice(rows, self.state.items_done, None)
            bar.update(self.state.items_done)
        # the next chunk's headers are probed by the pool while this process checks and writes the current one
        pending: tuple[int, list, ProbeResults] | None = None
        for index in itertools.count(self.state.chunks_done):
            chunk = list(itertools.islice(rows, self.opts.chunk_rows))
            started = (index, chunk, start_probes(_audio_paths(chunk), pool)) if chunk else None
            if pending is not None:
                self.one_chunk(*pending)
                bar.update(len(pending[1]))
            if started is None:
                break
            pending = started
        bar.close()

    def one_chunk(self, index: int, chunk: list[SourceRecord | Issue], probes: ProbeResults) -> None:
        found_headers = probes.get()
        kept: dict[str, list[Checked]] = {}
        issues: list[Issue] = []
        for item in chunk:
            row, found = (None, [item]) if isinstance(item, Issue) else self._check(item, found_headers)
            subset = _subset_of(item)
            found = [_filed(issue, subset) for issue in found]
            for issue in found:
                if self.opts.strict and issue.severity == ERROR:
                    raise DataError(f"{issue.one_line()} (--strict stops at the first bad row)")
                self.state.stats(subset).add_issue(issue)
            issues += found
            if row is not None:
                kept.setdefault(row.subset, []).append(row)
        self._write(index, kept)
        self.state.issues_bytes = append_issues(self.issues_path, issues, self.state.issues_bytes)
        self.state.chunks_done, self.state.items_done = index + 1, self.state.items_done + len(chunk)
        self.state.save(self.state_path)

    def _check(self, record: SourceRecord, probes: dict) -> tuple[Checked | None, list[Issue]]:
        return self.checker.check(record, probes.get(record.audio) if record.audio else None)

    def _write(self, index: int, kept: dict[str, list[Checked]]) -> None:
        if self.state.lang is None:
            texts = [row.text for rows in kept.values() for row in rows]
            self.state.lang = (
                self.opts.lang if self.opts.lang != "auto" else self.corpus.lang or detect_language(texts)
            )
        instruction = self.opts.instruction or DEFAULT_INSTRUCTION[self.state.lang]
        for subset, rows in kept.items():
            out = [sharegpt_row(row, instruction, self._path(row.audio)) for row in rows]
            size, _ = self.writer.write(f"{self.name}_{subset}", index, out)
            self.files, self.bytes = self.files + 1, self.bytes + size
            for row in rows:
                self.state.stats(subset).add_row(row.seconds, row.sample_rate)

    def _path(self, audio: str) -> str:
        return output_path(audio, self.out_dir, self.opts.path_style)


def _finish(run: _Run, layout: Layout, resumed_from: int) -> CorpusResult:
    state, name = run.state, run.name
    subsets = {s: stats for s, stats in sorted(state.subsets.items()) if s != UNASSIGNED}
    datasets = {f"{name}_{s}": stats.summary() for s, stats in subsets.items() if stats.rows}
    info_path = os.path.join(run.out_dir, DATASET_INFO)
    if datasets:
        merge_dataset_info(run.out_dir, {ds: dataset_info_entry(ds) for ds in datasets})
    lang = state.lang or "en"
    result = CorpusResult(
        name,
        layout.name,
        run.out_dir,
        lang,
        run.opts.instruction or DEFAULT_INSTRUCTION[lang],
        datasets,
        rows_read=state.items_done,
        rows_written=sum(d["rows"] for d in datasets.values()),
        files_written=run.files,
        bytes_written=run.bytes,
        resumed_from=resumed_from,
        issues_path=run.issues_path,
        report_path=os.path.join(run.out_dir, f"{name}.report.json"),
        dataset_info_path=info_path,
        notes=[printable(note) for note in run.corpus.notes],
    )
    skipped_only = {f"{name}_{s}": st.summary() for s, st in subsets.items() if not st.rows}
    outside = state.subsets.get(UNASSIGNED)
    report = {
        **_report_head(result),
        "datasets": datasets,
        "no_rows": skipped_only,
        # problems the reader found before a row had a subset (e.g. a manifest entry without a path)
        "outside_datasets": {"skipped_by_reason": dict(sorted(outside.skipped.items()))} if outside else {},
        "skipped_by_reason": dict(state.counts(ERROR)),
        "warnings_by_reason": dict(state.counts(WARNING)),
    }
    write_json(result.report_path, report)
    result.examples = first_issues(run.issues_path, 3)
    result.issue_counts = dict(state.counts(ERROR) + state.counts(WARNING))
    return result


def _report_head(result: CorpusResult) -> dict[str, Any]:
    keys = ("name", "layout", "lang", "instruction", "rows_read", "rows_written", "resumed_from", "notes")
    return {key: getattr(result, key) for key in keys} | {"issues_file": os.path.basename(result.issues_path)}
