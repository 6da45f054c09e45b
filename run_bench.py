"""Entry point: ``python run_bench.py suites/long_context.yaml`` (see orthrus.run_cli)."""

from orthrus.run_cli import main

if __name__ == "__main__":
    raise SystemExit(main())
