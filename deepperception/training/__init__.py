"""Training stages: CoT-SFT, GRPO, their rewards, and RL data filtering."""
