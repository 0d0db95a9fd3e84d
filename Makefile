# Two set-up commands (see README): `make demo` and `make test`.
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint bench perf-report images push

setup:
	./scripts/setup.sh

# The example's environment tag (hashed from the workflow builder step's inputs), its build
# context in out/context, then build → train → serve → predict; the output in out/demo.log.
demo: setup
	$(BIN)/python scripts/demo.py

# On the oldest MLflow (after the rest, the shortest of the four processes): every
# adapter's contract, the network bounds, and the runtime's main paths (log, register, a model logged outside the run, tracing).
OLDEST_MLFLOW_TESTS := tests/core/test_mlflow_compat.py tests/runtime/test_runtime_network.py \
	tests/runtime/test_runtime.py -k "not test_runtime.py or logs_model_and_outputs or registration \
	or outside_the_run or trace_back"

SEED := $(or $(SEED),$(shell od -An -N2 -tu2 /dev/urandom | tr -d ' '))

# The engine tests run in two processes, each with its own engine and registry, split where
# their session fixtures are: the step images (builder, serve, tracking server, the example's
# trainer) and the workflows on them; and the builds of every other test (any new file).
ENGINE_IMAGE_TESTS := tests/server/test_server_image.py tests/build/test_builder_image.py \
	tests/runtime/test_runtime_image.py tests/build/test_image_record.py tests/workflow
# The tests without an engine, in two processes too: the builds (direct builder, registry
# client, security) and everything else (tracking servers, the runtime, MLflow, docs).
REST_BUILD_TESTS := tests/build tests/image tests/security tests/cli tests/env tests/workflow
PYTEST := $(BIN)/pytest -q -p no:cacheprovider --durations=10 --randomly-seed=$(SEED)

test: setup
	$(BIN)/ruff check src tests bench scripts
	@echo "test order: seed $(SEED) (the same order again: make test SEED=$(SEED))"
	@echo "four processes side by side: the engine tests in two (the step images; the builds), the"
	@echo "rest in two (builds; servers and runtime, then the oldest-MLflow subset); a line per test"
	@echo "file from each while they run, then the pytest reports"
	@# fd 3 is the terminal: the progress lines go there (tests/support/progress.py), each
	@# report to its log.
	@status=0; export MLFLOW_STEPS_TEST_PROGRESS_FD=3; \
	MLFLOW_STEPS_TEST_PROGRESS_LABEL=rest-builds $(PYTEST) -m "not engine" \
		--basetemp=/tmp/mlflow-steps-tests-rest-builds $(REST_BUILD_TESTS) \
		3>&1 > .test-rest-builds.log 2>&1 & builds=$$!; \
	{ MLFLOW_STEPS_TEST_PROGRESS_LABEL=rest $(PYTEST) -m "not engine" \
		--basetemp=/tmp/mlflow-steps-tests-rest \
		$(foreach path,$(REST_BUILD_TESTS),--ignore=$(path)) \
		3>&1 > .test-rest.log 2>&1; rest=$$?; \
	MLFLOW_STEPS_TEST_PROGRESS_LABEL=oldest-mlflow .venv-mlflow-oldest/bin/pytest -q \
		-p no:cacheprovider -m "not server_mlflow" --basetemp=/tmp/mlflow-steps-tests-oldest \
		$(OLDEST_MLFLOW_TESTS) 3>&1 > .test-oldest.log 2>&1 || rest=$$?; \
	exit $$rest; } & others=$$!; \
	MLFLOW_STEPS_TEST_PROGRESS_LABEL=engine-images $(PYTEST) -m engine \
		--basetemp=/tmp/mlflow-steps-tests-engine-images $(ENGINE_IMAGE_TESTS) \
		3>&1 > .test-engine-images.log 2>&1 & images=$$!; \
	MLFLOW_STEPS_TEST_PROGRESS_LABEL=engine-builds $(PYTEST) -m engine \
		--basetemp=/tmp/mlflow-steps-tests-engine-builds \
		$(foreach path,$(ENGINE_IMAGE_TESTS),--ignore=$(path)) \
		3>&1 > .test-engine-builds.log 2>&1 || status=$$?; \
	wait $$images || status=$$?; \
	wait $$builds || status=$$?; \
	wait $$others || status=$$?; \
	for log in engine-images engine-builds rest-builds rest oldest; do \
		echo "--- $$log:"; cat .test-$$log.log; rm -f .test-$$log.log; done; \
	exit $$status

lint: setup
	$(BIN)/ruff check src tests bench scripts

bench: setup
	$(BIN)/python bench/hash_bench.py
	$(BIN)/python bench/builder_bench.py
	$(BIN)/python bench/executor_bench.py
	$(BIN)/python bench/conda_bench.py
	$(BIN)/python bench/reproducible_bench.py
	$(BIN)/python bench/runtime_bench.py
	$(BIN)/python bench/server_bench.py
	$(BIN)/python bench/report.py

# docs/performance.md (and its chart) from the results the benches wrote in bench/results/.
perf-report: setup
	$(BIN)/python bench/report.py

# The step images; BASE=IMAGE builds them on that base (default: the locally made one).
images: setup
	$(BIN)/python scripts/images.py $(if $(BASE),--base $(BASE))

push: setup
	@test -n "$(REGISTRY)" || { echo "usage: make push REGISTRY=host[:port][/namespace] [BASE=image]"; exit 2; }
	$(BIN)/python scripts/images.py --registry $(REGISTRY) $(if $(BASE),--base $(BASE))
