"""Supervised fine-tuning on the simulator's demonstrations: the smallest complete run.

Used as the stage every feedback experiment starts from, and by the checkpoint/resume tests
(it is one training run, checkpointed every few steps)::

    fbjax train --experiment experiments/sft_sim.py --workdir runs/sft
"""

from __future__ import annotations

import dataclasses

from experiments import common
from fbjax.checkpoint import CheckpointConfig
from fbjax.run import sim
from fbjax.run.config import ExperimentConfig, TrainStage
from fbjax.train import presets
from fbjax.train.config import TrainConfig
from fbjax.train.optim import OptimizerConfig

VARIANTS = ("sim", "tiny")
DEFAULT_VARIANT = "sim"


def get_config(variant: str = DEFAULT_VARIANT) -> ExperimentConfig:
    stage = TrainStage(
        name="sft", objective=presets.sft(),
        data=sim.Demonstrations(num_examples=2000, quality=0.5),
        optimizer=OptimizerConfig(learning_rate=3e-3, warmup_steps=30),
        train=TrainConfig(steps=300, batch=16, seq_len=96, slots_per_row=16, log_every=25),
    )
    config = ExperimentConfig(
        name="sft_sim", model=common.SIM_MODEL, tokenizer=sim.Tokenizer(vocab_size=384),
        task=common.SIM_TASK, mesh=common.SIM_MESH, stages=(stage,),
        checkpoint=CheckpointConfig(every_steps=50, keep=2),
    )
    if variant == "tiny":
        return dataclasses.replace(
            config,
            model=dataclasses.replace(config.model, hidden_size=32, mlp_dim=64),
            stages=(dataclasses.replace(
                stage, train=dataclasses.replace(stage.train, steps=12, batch=8, log_every=2),
                data=dataclasses.replace(stage.data, num_examples=200)),),
            checkpoint=CheckpointConfig(every_steps=2, keep=3, async_save=False),
        )
    if variant != "sim":
        raise ValueError(f"unknown variant {variant!r}; choose one of {VARIANTS}")
    return config
