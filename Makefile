# Two commands a new user needs: `make demo` (the main job end to end) and `make test`.
# Both create the virtual environment first when it is missing or out of date.

VENV      := .venv
PY        := $(VENV)/bin/python
STAMP     := $(VENV)/.installed
UV_VERSION := 0.13.9
DEMO_OUT  ?= demo_out
export TF_USE_LEGACY_KERAS := 1
export PYTHONUNBUFFERED := 1

.PHONY: setup demo test bench clean-venv native-router

setup: $(STAMP)

# Re-runs only when setup.py changes (the stamp is newer than setup.py otherwise).
$(STAMP): setup.py
	@PY310=$$(bash .ci/find_python310); \
	  test -n "$$PY310" || { echo "python3.10 not found (TFX 1.16 needs Python 3.10)"; exit 1; }; \
	  test -x $(PY) || $$PY310 -m venv $(VENV)
	$(PY) -m pip install -q "uv==$(UV_VERSION)"
	$(VENV)/bin/uv pip install --python $(PY) -q -e ".[test]"
	@touch $(STAMP)

demo: setup
	$(VENV)/bin/crocodile demo --out $(DEMO_OUT)

test: setup
	$(PY) -m pytest tests

# The router's compiled data plane (crocodile router --data-plane native). Needs g++ and Debian's
# libgrpc++-dev (apt-get install g++ libgrpc++-dev); without it the native router tests skip.
NATIVE_ROUTER := build/native/router_data_plane
native-router: $(NATIVE_ROUTER)

$(NATIVE_ROUTER): serving/native/router_data_plane.cc
	@mkdir -p $(dir $@)
	g++ -O2 -std=c++17 -Wall -o $@ $< $$(pkg-config --cflags --libs grpc++ libcrypto)

BENCH_OUT ?= bench_out

# Every benchmark prints JSON; the quality benchmark also writes its report under $(BENCH_OUT).
bench: setup
	@for b in data_generation training_speed serving_latency abtest_offline pipeline; do \
	  echo "== benchmarks/$$b.py"; $(PY) benchmarks/$$b.py || exit 1; done
	$(PY) benchmarks/quality.py --out $(BENCH_OUT)/quality

clean-venv:
	rm -rf $(VENV)
