.PHONY: setup demo test bench lint lock
setup:
	./scripts/setup.sh
demo:
	./scripts/demo.sh
test:
	./scripts/test.sh
lint:
	.venv/bin/ruff check bot handlers tests bench scripts && .venv/bin/mypy && .venv/bin/lint-imports
bench:
	.venv/bin/python -m bench.flags_bench && .venv/bin/python -m bench.controller_bench && \
	.venv/bin/python -m bench.judge_bench && .venv/bin/python -m bench.rollback_bench && \
	.venv/bin/python -m bench.ack_bench && .venv/bin/python -m bench.stats_bench
lock:
	./scripts/lock.sh
