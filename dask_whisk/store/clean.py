"""``dask-whisk clean``: delete job namespaces that killed clients left in the stores.

A job's namespace is recognised by its name (``store.JOB_PREFIX`` plus its start time), so only
namespaces older than ``--older-than`` hours are removed and running jobs are left alone.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from . import JOB_PREFIX, StoreError, job_age_seconds
from .local import default_root

Remover = Callable[[str], None]


def local_jobs(root: Path) -> dict[str, Remover]:
    """Job directories under ``root`` and how to remove each."""
    if not root.is_dir():
        return {}
    return {
        entry.name: (lambda _name, path=entry: shutil.rmtree(path, ignore_errors=True))
        for entry in root.iterdir() if entry.name.startswith(JOB_PREFIX) and entry.is_dir()
    }


def swift_jobs() -> dict[str, Remover]:
    """Job namespaces in the configured Swift and how to remove each (raises if unconfigured)."""
    from .swift import SwiftJobStore, job_namespaces
    from .swift_settings import resolve_settings

    settings = resolve_settings()

    def remove(job_id: str) -> None:
        store = SwiftJobStore(job_id, settings, create=False)
        try:
            store.destroy()
        finally:
            store.close()

    return {job_id: remove for job_id in job_namespaces(settings)}


def clean(jobs: dict[str, Remover], where: str, older_than_hours: float, dry_run: bool,
          out: TextIO | None = None) -> int:
    """Remove the jobs older than the threshold; print one line per job; return how many."""
    removed = 0
    for job_id in sorted(jobs):
        age = job_age_seconds(job_id)
        if age is None or age < older_than_hours * 3600:
            continue
        if not dry_run:
            jobs[job_id](job_id)
        removed += 1
        verb = "would remove" if dry_run else "removed"
        print(f"{verb} {where} {job_id} (started {age / 3600:.1f} h ago)", file=out or sys.stdout)
    return removed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``dask-whisk clean``."""
    parser.add_argument("--older-than", type=float, default=24.0, metavar="HOURS",
                        help="remove only jobs started at least this many hours ago (default 24)")
    parser.add_argument("--dry-run", action="store_true", help="list what would be removed")
    parser.add_argument("--store", choices=["local", "swift", "all"], default="all",
                        help="which store to clean (default all; Swift is skipped if not "
                             "configured unless asked for explicitly)")


def run(args: argparse.Namespace) -> int:
    """Clean the chosen stores; exit 1 if a store asked for could not be cleaned."""
    if args.older_than < 0:
        print("dask-whisk clean: --older-than must be >= 0 hours", file=sys.stderr)
        return 2
    status = 0
    if args.store in ("local", "all"):
        root = default_root()
        count = clean(local_jobs(root), "local", args.older_than, args.dry_run)
        print(f"local store {root}: {count} job(s) {'to remove' if args.dry_run else 'removed'}",
              file=sys.stderr)
    if args.store in ("swift", "all"):
        from .swift_settings import SwiftConfigError

        try:
            count = clean(swift_jobs(), "swift", args.older_than, args.dry_run)
            print(f"swift: {count} job(s) {'to remove' if args.dry_run else 'removed'}",
                  file=sys.stderr)
        except SwiftConfigError as exc:
            if args.store == "swift" or "not configured" not in str(exc):
                print(f"dask-whisk clean: {exc}", file=sys.stderr)
                status = 1
            else:
                print("swift: not configured, skipped", file=sys.stderr)
        except StoreError as exc:
            print(f"dask-whisk clean: {exc}", file=sys.stderr)
            status = 1
    return status
