# Two entry points: `make run` (the main job) and `make test` (the whole suite).
# Both create .venv and install everything on first use.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test clean browser

$(STAMP): pyproject.toml requirements-dev.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements-dev.txt
	@# the C++ kernels, once (minutes on 2 cores), so that a run's time is its own; without a
	@# compiler the runs use the Python backend, so this never fails the install
	$(VENV)/bin/rnnkit build || echo "the C++ kernels were not built: runs use the slower Python backend"
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/rnnkit train

# tests/triton run twice: skipped in the main run (no GPU here), then in Triton's interpreter, which
# must be switched on before Triton is imported
test: $(STAMP) browser
	$(PY) -m pytest
	TRITON_INTERPRET=1 $(PY) -m pytest tests/triton

# Headless Chromium (Debian's package) for the page tests in tests/view: installed when it is
# missing and we are root; never fails the build (without it those tests skip, saying why).
browser:
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing chromium for the page tests (tests/view)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	    || echo "chromium could not be installed: the page's browser tests will be skipped"; \
	fi

clean:
	rm -rf $(VENV) build *.egg-info
