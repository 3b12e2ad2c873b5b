"""The frozen KL reference (`prepare_reference`, --kl-coef > 0) computes what the policy's starting point computes,
on every process: one process; two (gloo) under DDP; under FSDP2 with cpu_ram_efficient_loading, where process 1
loads zeros and the weights of process 0 must reach it; and, where DeepSpeed is installed, ZeRO-2 (an engine of
stage 0) and ZeRO-3 (loaded inside zero.Init, partitioned, an engine of stage 3).

Accelerate sets up FSDP and DeepSpeed on GPUs only: on CPU those two cases give `prepare_reference` an accelerator
stand-in with what it reads (the FSDP2 plugin, or the DeepSpeed config that accelerate's prepare leaves), and run the
real accelerate / DeepSpeed preparation. Run as a script (by the test, under torch.distributed.run), this file is the
2-process worker."""

import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import grpo  # noqa: E402

PROMPT = torch.tensor([[1, 5, 7, 9, 11, 13, 2, 4]])


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(PROMPT).logits


def is_frozen_for_inference(ref) -> bool:
    module = getattr(ref, "module", ref)  # a DeepSpeed engine's model
    return not module.training and not any(p.requires_grad for p in module.parameters())


def test_one_process_reference_is_a_frozen_unwrapped_copy_on_the_device():
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    policy = grpo.load_pretrained(grpo.TESTBED_MODEL, "model").eval()
    ref = grpo.prepare_reference(accelerator, grpo.load_pretrained(grpo.TESTBED_MODEL, "model"))
    assert type(ref) is type(policy) and is_frozen_for_inference(ref)
    assert {p.device for p in ref.parameters()} == {accelerator.device}
    assert torch.equal(logits(ref), logits(policy))


def test_two_processes_ddp_fsdp2_and_deepspeed_references_match_the_policy_on_each():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__]
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = dict(re.findall(r"(\w+ [01]): (ok|skipped)", proc.stdout))  # the processes' lines may interleave
    for rank in (0, 1):
        assert results[f"ddp {rank}"] == results[f"fsdp2 {rank}"] == "ok", proc.stdout
        for stage in (2, 3):  # skipped where DeepSpeed is not installed
            assert f"zero{stage} {rank}" in results, proc.stdout


def report(case: str, rank: int, result: str) -> None:
    sys.stdout.write(f"{case} {rank}: {result}\n")  # one write
    sys.stdout.flush()


def worker() -> None:
    from accelerate import Accelerator
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    accelerator = Accelerator(cpu=True)  # gloo, 2 processes: DistributedType.MULTI_CPU, the DDP path
    rank = accelerator.process_index
    assert accelerator.num_processes == 2
    starting_point = grpo.load_pretrained(grpo.TESTBED_MODEL, "model").eval()
    expected = logits(starting_point)

    # DDP: a full, unwrapped copy on each process, equal to the policy that accelerate prepared (DDP-wrapped)
    policy = grpo.load_pretrained(grpo.TESTBED_MODEL, "model")
    policy, _ = accelerator.prepare(policy, torch.optim.AdamW(policy.parameters()))
    ref = grpo.prepare_reference(accelerator, grpo.load_pretrained(grpo.TESTBED_MODEL, "model"))
    assert isinstance(policy, torch.nn.parallel.DistributedDataParallel) and type(ref) is type(starting_point)
    assert is_frozen_for_inference(ref) and torch.equal(logits(ref), logits(policy.eval()))
    report("ddp", rank, "ok")

    # FSDP2, cpu_ram_efficient_loading: as `accelerate launch` sets it, only process 0 reads the weights
    os.environ.update(ACCELERATE_USE_FSDP="true", FSDP_CPU_RAM_EFFICIENT_LOADING="true")
    loaded = grpo.load_pretrained(grpo.TESTBED_MODEL, "model")
    os.environ.update(ACCELERATE_USE_FSDP="false", FSDP_CPU_RAM_EFFICIENT_LOADING="false")
    assert (rank == 0) == any(p.abs().sum() > 0 for p in loaded.parameters())  # process 1: zeros (the fault)
    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=2,
        auto_wrap_policy="transformer_based_wrap",
        reshard_after_forward=True,
        cpu_ram_efficient_loading=True,
        state_dict_type="FULL_STATE_DICT",
    )
    fsdp = SimpleNamespace(
        distributed_type=DistributedType.FSDP,
        is_fsdp2=True,
        state=SimpleNamespace(fsdp_plugin=plugin),
        device=accelerator.device,
        is_main_process=accelerator.is_main_process,
        mixed_precision="no",
    )
    ref = grpo.prepare_reference(fsdp, loaded)
    from torch.distributed.fsdp import FSDPModule

    assert isinstance(ref, FSDPModule) and is_frozen_for_inference(ref)
    assert torch.equal(logits(ref), expected)
    report("fsdp2", rank, "ok")

    try:
        import deepspeed
    except ImportError:
        for stage in (2, 3):
            report(f"zero{stage}", rank, "skipped")
        return
    from transformers.integrations import HfDeepSpeedConfig, unset_hf_deepspeed_config

    deepspeed.init_distributed(dist_backend="gloo")  # on the process group that accelerate started
    for stage in (2, 3):
        config = {  # what accelerate's prepare leaves in its plugin (configs/zero*.yaml, fp32)
            "train_batch_size": 16,
            "train_micro_batch_size_per_gpu": 8,
            "gradient_accumulation_steps": 1,
            "gradient_clipping": 1.0,
            "steps_per_print": float("inf"),
            "bf16": {"enabled": False},
            "fp16": {"enabled": False},
            "zero_optimization": {"stage": stage, "offload_optimizer": {"device": "none"}},
            "optimizer": {"type": "AdamW", "params": {"lr": 1e-6}},
        }
        untouched = {**config, "zero_optimization": dict(config["zero_optimization"])}
        hf_config = HfDeepSpeedConfig(config)  # installed by accelerate's DeepSpeedPlugin: ZeRO-3 loads in zero.Init
        loaded = grpo.load_pretrained(grpo.TESTBED_MODEL, "model")
        assert (stage == 3) == all(hasattr(p, "ds_id") for p in loaded.parameters())
        ds = SimpleNamespace(
            distributed_type=DistributedType.DEEPSPEED,
            state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(deepspeed_config=config)),
            device=accelerator.device,
        )
        ref = grpo.prepare_reference(ds, loaded)
        assert isinstance(ref, deepspeed.DeepSpeedEngine) and is_frozen_for_inference(ref)
        assert ref.zero_optimization_stage() == (3 if stage == 3 else 0) and config == untouched
        assert torch.equal(logits(ref), expected)
        del hf_config
        unset_hf_deepspeed_config()
        report(f"zero{stage}", rank, "ok")


if __name__ == "__main__":
    worker()
    # both processes done, then the process group closed before the interpreter exits: gloo's threads torn down at
    # exit aborted a worker under load ("terminate called without an active exception", exit code -6)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
