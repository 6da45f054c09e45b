"""Entry point: ``python run_bench.py suites/long_context.yaml`` (see orthrus.bench)."""

from orthrus.bench.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
