# brainseg: the two commands a newcomer needs.
PYTHON ?= python3
DEMO_DIR := src/brainseg/data/demo
OUT ?= demo_output

.PHONY: install demo test test-fast bench reference ablation

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

# The paper's ablations (Ganaye et al. 2018, Tables 1-2) on MICCAI 2012: see docs/ablation.md.
TRAIN_CASES := 1001 1002 1006 1007 1009 1010 1011 1012 1014 1015

runs/reference/template.nii.gz:
	$(PYTHON) -m brainseg atlas build configs/miccai2012_manifest.csv -o runs/reference --labels miccai2012 --cases $(TRAIN_CASES)

reference: runs/reference/template.nii.gz

ablation: install reference
	$(PYTHON) -m brainseg ablation configs/ablation/distance.yaml configs/ablation/distance_rbf.yaml \
		configs/ablation/distance_conv.yaml configs/ablation/distance_conv_rbf.yaml -o runs/ablation/table2
	$(PYTHON) -m brainseg ablation configs/ablation/basenet.yaml configs/ablation/dist.yaml \
		configs/ablation/prob.yaml configs/ablation/dist_prob.yaml configs/ablation/dist_prob_3d.yaml \
		configs/ablation/full.yaml -o runs/ablation/table1
	$(PYTHON) -m brainseg ablation configs/ablation/basenet.yaml configs/ablation/conv_rbf_distbranch/dist.yaml \
		configs/ablation/prob.yaml configs/ablation/conv_rbf_distbranch/dist_prob.yaml \
		configs/ablation/conv_rbf_distbranch/dist_prob_3d.yaml configs/ablation/conv_rbf_distbranch/full.yaml \
		-o runs/ablation/table1_conv_rbf_distbranch
