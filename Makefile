# The two commands of the README. Both install what they need (venv, packages, jars).
.PHONY: demo test lint

demo:
	@deploy/local/bootstrap.sh
	@.venv/bin/ledgerflow demo

test:
	@deploy/local/bootstrap.sh
	@.venv/bin/ruff check app tests
	@.venv/bin/ruff format --check app tests
	@.venv/bin/mypy app
	@.venv/bin/python -m pytest -p no:cacheprovider

lint:
	@.venv/bin/ruff check app tests && .venv/bin/ruff format --check app tests && .venv/bin/mypy app
