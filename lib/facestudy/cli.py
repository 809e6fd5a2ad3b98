"""The ``facestudy`` command: ``list``, ``run``, ``data status|prepare``, ``scorecard``, ``workshop``, ``train``.

Bad requests (unknown chapter, profile, parameter, setting, or a value of the wrong type) exit with code 2
and a message listing the valid choices, before any kernel starts.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import profiles
from .errors import DataError, ParameterError


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ParameterError(f"{flag} takes key=value, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def cmd_list(args) -> int:
    from . import chapters

    for ch in chapters.chapters():
        print(f"{ch.id}: {ch.title}")
        print(f"  profiles: {', '.join(profiles.PROFILES)}")
        print("  parameters (-p key=value):")
        for p in ch.parameters().values():
            print(f"    {p.name:<12} {p.type:<6} = {p.default:<12} {p.help}")
        if ch.id in profiles.TABLE:
            keys = sorted(profiles.TABLE[ch.id].get("base", {}))
            if keys:
                print(f"  profile settings (--set key=value): {', '.join(keys)}")
    return 0


def cmd_run(args) -> int:
    from . import runner

    params = _pairs(args.param, "-p")
    overrides = _pairs(args.set, "--set")
    runner.plan(args.chapter, args.profile, params, overrides)  # validate before any kernel starts
    results = runner.run_chapters(args.chapter, args.profile, params, overrides,
                                  out=Path(args.out) if args.out else None, progress=not args.quiet,
                                  rehearse=args.rehearse)
    print()
    print(runner.table(results))
    return 0 if all(r.status == "ok" for r in results) else 1


def cmd_data(args) -> int:
    from . import data
    from .data import store

    if args.action == "fixtures":
        from .data.fixtures import main as fixtures_main

        return fixtures_main(args)
    if args.action == "status":
        if args.names:
            raise ParameterError(f"data status takes no dataset names (got {' '.join(args.names)}); it lists all")
        df = data.status_table()
        with __import__("pandas").option_context("display.width", 200, "display.max_colwidth", 60):
            print(df.drop(columns=["title"]).to_string(index=False))
        print(f"data roots: {', '.join(str(r) for r in store.roots()) or '(none: FACESTUDY_DATA is unset)'}; "
              f"cache: {store.cache_path()}")
        for root in df.attrs["missing_roots"]:
            print(f"facestudy: data root {root} does not exist; fix FACESTUDY_DATA (a '{os.pathsep}'-separated "
                  f"list of folders)", file=sys.stderr)
        for line in df.attrs["problems"]:
            print(f"facestudy: data error: {line}", file=sys.stderr)
        return 3 if df.attrs["problems"] else 0
    unknown = [n for n in args.names if n not in data.DATASETS]
    if unknown:
        raise ParameterError(f"unknown dataset {unknown[0]!r} for data prepare; valid: {', '.join(data.DATASETS)}")
    if args.limit is not None and args.limit < 1:
        raise ParameterError(f"--limit must be a positive number of images, got {args.limit}")
    done = data.prepare(names=args.names or None, limit=args.limit, progress=not args.quiet)
    if done.empty:
        roots = ", ".join(str(r) for r in store.roots()) or "(none: FACESTUDY_DATA is unset)"
        print(f"no dataset files found under the data roots [{roots}]: nothing to prepare (chapters use the "
              f"synthetic world); set FACESTUDY_DATA to the folder holding them (see book/data.md)")
        for root in store.missing_roots():
            print(f"facestudy: data root {root} does not exist; fix FACESTUDY_DATA", file=sys.stderr)
        return 0
    print(done.to_string(index=False))
    return 0


def cmd_workshop(args) -> int:
    from . import chapters, workshop

    root = chapters.root()
    if args.sync_bootstrap:
        changed = workshop.sync_bootstrap(root)
        print(f"bootstrap cells from {workshop.repository_url(root)}: {len(changed)} notebook(s) updated")
        if not args.dir:
            return 0
    if not args.dir:
        raise ParameterError("facestudy workshop needs an output folder DIR (or --sync-bootstrap)")
    written = workshop.write_workshop(Path(args.dir), args.chapters, profile=args.profile, device=args.device,
                                      root=root)
    print(f"wrote {len(written['student'])} student and {len(written['teacher'])} teacher notebooks, "
          f"and {Path(args.dir) / 'README.md'}")
    return 0


def cmd_scorecard(args) -> int:
    from .scorecard import write_scorecard

    if not Path(args.records).is_dir():
        raise ParameterError(f"--records {args.records}: no such folder; give the folder holding the executed "
                             f"chapters' claim records (default book/executed, written by facestudy run)")
    path = write_scorecard(Path(args.records), Path(args.out))
    print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="facestudy",
                                description="Run and inspect the chapters of Inside Face Recognition.")
    sub = p.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("list", help="chapters, profiles and each parameter with type, default and help")
    ls.set_defaults(fn=cmd_list)
    r = sub.add_parser("run", help="execute chapters with papermill")
    r.add_argument("chapter", help="chapter id (or unique prefix, e.g. 01) or 'all'")
    r.add_argument("--profile", default="default", help=f"one of {', '.join(profiles.PROFILES)} (default: default)")
    r.add_argument("-p", "--param", action="append", metavar="KEY=VALUE", help="notebook parameter")
    r.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one profile-table setting")
    r.add_argument("--out", help="folder for executed notebooks (default: book/executed)")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.add_argument("--rehearse", action="store_true",
                   help="the profile's model shapes and code paths with capped work (profiles.REHEARSAL), on the "
                        "CPU, no claims recorded; default --out _build/rehearsal/PROFILE (book page: Running big)")
    r.set_defaults(fn=cmd_run)
    d = sub.add_parser("data", help="real data: status table, prepare the aligned caches, or write the "
                                    "miniature paper-format fixtures (data fixtures DIR)")
    d.add_argument("action", choices=["status", "prepare", "fixtures"])
    d.add_argument("names", nargs="*", help="datasets to prepare (default: all present); for fixtures: DIR")
    d.add_argument("--big", action="store_true", help="fixtures: also IResNet-100 and ViT-base KP-RPE (~720 MB)")
    d.add_argument("--source", default="auto", help="fixtures: faces from auto | real | synthetic")
    d.add_argument("--limit", type=int, default=None, help="prepare only the first N images of each")
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(fn=cmd_data)
    s = sub.add_parser("scorecard", help="gather the chapters' claim records into the book's scorecard page")
    s.add_argument("--records", default="book/executed")
    s.add_argument("--out", default="book/executed/scorecard.md")
    s.set_defaults(fn=cmd_scorecard)
    w = sub.add_parser("workshop", help="student notebooks (solutions stubbed) and teacher copies for a workshop")
    w.add_argument("dir", nargs="?", help="output folder: DIR/student, DIR/teacher, DIR/README.md")
    w.add_argument("--chapters", nargs="+", metavar="ID", help="chapter ids or unique prefixes (default: all)")
    w.add_argument("--profile", default="default", help=f"preset profile, one of {', '.join(profiles.PROFILES)}")
    w.add_argument("--device", default="auto", help="preset device: auto | cpu | cuda | mps")
    w.add_argument("--sync-bootstrap", action="store_true",
                   help="rewrite every chapter's first (bootstrap) cell from repository.url in _config.yml")
    w.set_defaults(fn=cmd_workshop)
    from . import train_cli

    t = sub.add_parser("train", help="train one chapter arm outside its notebook (alone or under torchrun); the "
                                     "chapter then loads the checkpoint from the cache")
    train_cli.add_arguments(t).set_defaults(fn=train_cli.cmd_train)
    return p


def _warning_line(message, category, filename, lineno, line=None) -> str:
    return f"facestudy: warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 ok, 1 a chapter failed (or an unexpected error), 2 bad usage, 3 data / cache problem,
    130 interrupted. Every error is one line on stderr (``FACESTUDY_DEBUG=1`` adds the traceback)."""
    import warnings

    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.formatwarning = _warning_line
    debug = os.environ.get("FACESTUDY_DEBUG", "") not in ("", "0")
    try:
        return args.fn(args)
    except ParameterError as exc:
        print(f"facestudy: error: {exc}", file=sys.stderr)
        return 2
    except DataError as exc:
        print(f"facestudy: data error: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("facestudy: interrupted; run the same command again to resume (finished shards, epochs and "
              "chapters are kept)", file=sys.stderr)
        return 130
    except OSError as exc:
        if debug:
            raise
        from .data.store import os_error_message

        where = exc.filename or "a file"
        print(f"facestudy: data error: {os_error_message(exc, where, 'use')}", file=sys.stderr)
        return 3
    except Exception as exc:  # noqa: BLE001 - no raw traceback for a CLI user
        if debug:
            raise
        print(f"facestudy: internal error: {type(exc).__name__}: {exc}; rerun with FACESTUDY_DEBUG=1 for the "
              f"traceback and report it", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
