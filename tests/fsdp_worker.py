"""One worker of the FSDP test (tests/test_fsdp.py), run under torchrun on CPU with gloo, and the
single-process reference it is compared with.

The student's decoder layers and then the whole model are sharded with torch's FSDP2
`fully_shard`, as the Trainer's FSDP (accelerate, TRANSFORMER_BASED_WRAP over the class's
`_no_split_modules`) shards it on GPUs; the factor bank, owned by the base model, is sharded with
the root. Each worker trains on its half of the batch; FSDP averages the gradients.

Usage: python -m torch.distributed.run --nproc_per_node 2 fsdp_worker.py TEACHER STUDENT OUT.safetensors
"""

from __future__ import annotations

import sys

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

import tensorslim  # noqa: F401 - loads decomposed students in from_pretrained
from tensorslim.distill.config import DistillationConfig
from tensorslim.distill.losses import LossBatch, get_loss
from tensorslim.distill.teacher import forward_features

CONFIG = DistillationConfig(losses=["token_kl", "attention", "hidden"], layer_map="uniform", temperature=2.0)
STEPS, BATCH, SEQ, LR = 3, 4, 16, 3e-3


def batch() -> torch.Tensor:
    return torch.randint(3, 96, (BATCH, SEQ), generator=torch.Generator().manual_seed(1))


def train(student, teacher, ids: torch.Tensor) -> list[float]:
    """STEPS AdamW steps of CONFIG's objective on `ids`; the loss of each step."""
    pairs = [(0, 0), (1, 1)]
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    optimizer = torch.optim.AdamW(student.parameters(), lr=LR)
    losses = []
    for _ in range(STEPS):
        with torch.no_grad():
            t = forward_features(teacher, inputs, CONFIG.needs, [p[1] for p in pairs])
        s = forward_features(student, inputs, CONFIG.needs, [p[0] for p in pairs])
        batch_ = LossBatch(inputs["attention_mask"], pairs, temperature=CONFIG.temperature, causal=True)
        loss = sum(get_loss(name)[0](s, t, batch_) for name in CONFIG.losses)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    return losses


def load(teacher_dir, student_dir):
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir).eval().requires_grad_(False)
    return teacher, AutoModelForCausalLM.from_pretrained(student_dir)


def main(teacher_dir: str, student_dir: str, out: str) -> None:
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    teacher, student = load(teacher_dir, student_dir)
    for layer in student.model.layers:
        fully_shard(layer)
    fully_shard(student)
    assert all(type(p).__name__ == "DTensor" for p in student.parameters()), "not every parameter is sharded"
    share = BATCH // world
    train(student, teacher, batch()[rank * share : (rank + 1) * share])
    state = {k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in student.state_dict().items()}
    if rank == 0:
        save_file({k: v.contiguous() for k, v in state.items()}, out)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:4])
