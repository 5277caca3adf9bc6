"""Command line: `python run_pipeline.py [run options]`, `... serve`, `... dag`, `... sync-notebooks`,
`... refresh-notebooks`."""

from __future__ import annotations

import argparse
import sys

from . import config
from .errors import Interrupted, UserError

SUBCOMMANDS = ("run", "serve", "dag", "sync-notebooks", "refresh-notebooks")


def _add_endpoint_option(parser: argparse.ArgumentParser) -> None:
    """``--endpoint-url``: the same option for a run and for serve."""
    parser.add_argument(
        "--endpoint-url",
        default=None,
        metavar="URL",
        help="S3-compatible endpoint for an s3:// --output-dir, e.g. http://minio:9000 (default "
        "$AWS_ENDPOINT_URL; credentials come from the AWS variables or files, never from this URL)",
    )


def _run_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run_pipeline.py",
        description="Run the volcast stages (ingest -> features -> train) as papermill notebooks. "
        "Other commands: 'serve' (API + dashboard), 'dag' (print the DAG), 'sync-notebooks' (bring each "
        ".ipynb and its .py twin in step), 'refresh-notebooks' (re-execute them, storing their outputs).",
    )
    parser.add_argument(
        "--source",
        help="Kaggle-layout folder or .zip, 'kaggle' or 'demo' (default: kaggle when credentials exist, else demo)",
    )
    parser.add_argument(
        "--output-dir", default=None, help=f"where everything goes (default {config.DEFAULT_OUTPUT_DIR})"
    )
    parser.add_argument("--stages", default=None, help="comma-separated subset of " + ",".join(config.STAGES))
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="STAGE.NAME=VALUE",
        help="set a notebook parameter, e.g. features.window=10 (repeatable)",
    )
    parser.add_argument("--force", action="store_true", help="re-run stages even when up to date")
    parser.add_argument("--jobs", type=int, default=None, help="worker processes (default: all cores)")
    parser.add_argument("--no-progress", action="store_true", help="no per-cell progress bars")
    parser.add_argument(
        "--keep",
        default=10,
        metavar="N",
        help="after a successful run keep the N newest models and run records, plus the served model (default 10)",
    )
    parser.add_argument(
        "--executor",
        choices=("local", "dask"),
        default=None,
        help="where ingest's and features' partition tasks run: local worker processes (default) "
        "or a dask.distributed cluster (default dask when $VOLCAST_DASK_SCHEDULER is set)",
    )
    parser.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDR",
        help="dask scheduler address, e.g. tcp://HOST:8786 (default $VOLCAST_DASK_SCHEDULER; "
        "none: --executor dask starts a LocalCluster of --jobs worker processes)",
    )
    _add_endpoint_option(parser)
    return parser


def _serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run_pipeline.py serve", description="Start the JSON API and the Voila dashboard on the latest model."
    )
    parser.add_argument("--output-dir", default=None)
    parser.add_argument("--host", default=config.DEFAULT_HOST)
    parser.add_argument("--api-port", type=int, default=config.DEFAULT_API_PORT)
    parser.add_argument("--dashboard-port", type=int, default=config.DEFAULT_DASHBOARD_PORT)
    parser.add_argument(
        "--api-workers", type=int, default=0, help="API processes sharing the port (default: one per core)"
    )
    _add_endpoint_option(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] in SUBCOMMANDS else "run"
    try:
        if command == "serve":
            args = _serve_parser().parse_args(argv)
            _use_endpoint(args.endpoint_url)
            from . import serve

            return serve.serve(
                args.output_dir or config.DEFAULT_OUTPUT_DIR,
                host=args.host,
                api_port=args.api_port,
                dashboard_port=args.dashboard_port,
                api_workers=args.api_workers,
            )
        if command == "dag":
            from . import pipeline

            print(pipeline.mermaid())
            return 0
        if command == "sync-notebooks":
            from . import notebooks

            for path in notebooks.sync_notebooks(argv or None):
                print(f"in sync: {path.name} <-> {path.with_suffix('.py').name}")
            return 0
        if command == "refresh-notebooks":
            from . import notebooks

            notebooks.refresh_notebooks(argv or None)
            return 0
        args = _run_parser().parse_args(argv)
        _use_endpoint(args.endpoint_url)
        return _run(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Interrupted as exc:
        print(f"interrupted ({exc}): the run stopped and its lock is released; re-run to finish it", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _use_endpoint(url: str | None) -> None:
    """--endpoint-url goes to this process and the ones it starts (kernels, API workers)."""
    if url:
        from . import remote

        remote.use_endpoint(url)


def _run(args) -> int:
    from . import pipeline

    stages = pipeline.parse_stages(args.stages)
    params = pipeline.parse_params(args.param)
    try:
        pipeline.run_pipeline(
            args.output_dir,
            source=args.source,
            stages=stages,
            params=params,
            force=args.force,
            jobs=args.jobs,
            progress=not args.no_progress,
            executor=args.executor,
            scheduler=args.scheduler,
            keep=args.keep,
        )
    except pipeline.StageFailed as exc:
        if exc.user_error:
            print(f"error: {exc.error.removeprefix('UserError: ')}", file=sys.stderr)
        else:
            print(f"error: stage {exc.stage} failed: {exc.error}", file=sys.stderr)
        print(f"  the executed notebook shows where: {exc.notebook}", file=sys.stderr)
        return 2 if exc.user_error else 1
    return 0
