"""Review in Weights & Biases: a run per cell (`tracking`), a collector run per decision rule
(`collector_run`) and the W&B Report that groups the curves by arm (`wandb_report`)."""
