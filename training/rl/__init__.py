"""Stage 3: reinforcement learning with clinical rewards (trl's `GRPOTrainer`); see `training.rl.grpo`."""
