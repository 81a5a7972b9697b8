# brainseg: the two commands a newcomer needs.
PYTHON ?= python3
DEMO_DIR := src/brainseg/data/demo
OUT ?= demo_output

.PHONY: install demo test test-fast bench

install:
	$(PYTHON) -m pip install -q -e .

demo: install
	$(PYTHON) -m brainseg segment $(DEMO_DIR)/1000_SS.nii.gz -o $(OUT)
	$(PYTHON) -m brainseg evaluate $(OUT)/1000_SS_seg.nii.gz $(DEMO_DIR)/1000_glm.nii.gz -o $(OUT)/1000_scores.csv
	@echo "Outputs in $(OUT)/: 1000_SS_seg.nii.gz, 1000_SS_volumes.csv, 1000_SS_qc.png, 1000_scores.csv"

test:
	$(PYTHON) -m pip install -q -e '.[test]'
	$(PYTHON) -m pytest -q

test-fast:
	$(PYTHON) -m pytest -q -m "not slow"

bench: install
	$(PYTHON) benchmarks/bench_segment.py
