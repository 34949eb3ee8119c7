"""torch.distributed plumbing: process group, DDP / FSDP2 wrapping, state-dict gathering.

`torchrun --nproc_per_node N -m seer.train ...` sets RANK/WORLD_SIZE/LOCAL_RANK; with more
than one process the run is DDP (`distributed=fsdp` for FSDP2). NCCL on GPU, gloo on CPU.
Every collective waits at most `train.dist_timeout_s`, so a dead rank makes the others
fail with an error instead of hanging.
"""

from __future__ import annotations

import datetime
import os
import socket
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist

# Imported before any process group exists, on purpose: torch.distributed.nn.functional
# binds `group=group.WORLD` as a default argument of ten functions when first imported,
# and torch._dynamo (imported lazily by DDP's constructor, torch.compile and the Triton
# ops) imports it. Imported after init_process_group, those defaults pin the world group:
# destroy_process_group then cannot free it, its gloo worker and transport threads run on
# until interpreter exit, and a rank that finished its work can die there with
# "terminate called without an active exception" (SIGABRT). ZeroRedundancyOptimizer's
# module does the same (`_broadcast_object(..., group=dist.group.WORLD)`), so it is
# imported here too, not where a checkpoint first needs it.
import torch.distributed.nn  # noqa: F401
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.optim import ZeroRedundancyOptimizer

from seer.config import Config


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    mode: str = "none"  # none, ddp, fsdp

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def initialized(self) -> bool:
        return dist.is_available() and dist.is_initialized()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pick_device(cfg: Config, local_rank: int) -> torch.device:
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("device=cuda but no CUDA device is available")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def setup(cfg: Config) -> DistInfo:
    """Start the process group when launched by torchrun (or when ddp/fsdp is asked for
    in a single process: a one-process group, handy to test the wrapped code paths)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    mode = cfg.distributed
    if mode == "auto":
        mode = "ddp" if world > 1 else "none"
    if mode == "none" and world > 1:
        raise RuntimeError(f"distributed=none but launched with WORLD_SIZE={world}; use ddp or fsdp")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(cfg, local_rank)
    if mode == "none":
        return DistInfo(device=device)
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    backend = "nccl" if device.type == "cuda" else "gloo"
    timeout = datetime.timedelta(seconds=cfg.train.dist_timeout_s)
    if not dist.is_initialized():
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        store = _restart_scoped_store(world, timeout)
        if store is not None:
            kwargs.update(store=store, rank=int(os.environ["RANK"]), world_size=world)
        dist.init_process_group(backend, timeout=timeout, **kwargs)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device, mode)


def _restart_scoped_store(world: int, timeout: datetime.timedelta) -> dist.Store | None:
    """Under torchrun's shared agent store, the store scoped to this restart attempt.

    torchrun (torch 2.14) keeps one TCPStore for all restarts of `--max-restarts`, so the
    gloo/NCCL addresses the killed attempt published are still there: a restarted rank
    that reads its peer's dead address before the peer rewrites it (a race) fails its init
    after a long connection retry (~100 s seen). The restart count is the same for all
    ranks of one node, so a prefix with it gives each attempt fresh keys. Across nodes the counts can differ (an
    agent restarts healthy workers without counting); multi-node elastic jobs should run
    torchrun with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1, a fresh store per rendezvous, and
    this returns None.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        world,
        is_master=False,
        timeout=timeout,
    )
    return dist.PrefixStore(f"seer/attempt_{attempt}/", store)


def _drop_mesh_caches() -> None:
    """Empty DTensor's process-wide caches, which keep every DeviceMesh they saw alive.

    FSDP2's parameters are DTensors, and torch memoizes their sharding and redistribution
    plans for the life of the process: the C++ and Python sharding-propagation caches and
    the transform-plan cache (keyed by DTensorSpecs, which hold their mesh), the planner
    cache and `MeshTopoInfo.build_from_mesh` (keyed by the mesh). A mesh holds its process
    group, so after a FSDP2 run destroy_process_group cannot free the world group: its gloo
    worker and transport threads outlive it and meet interpreter exit still joinable, where
    a rank that finished its work can die with "terminate called without an active
    exception". The names are private and move between torch releases, so each is
    looked up, not assumed.
    """
    clear_cpp = getattr(torch._C, "_clear_DTensor_sharding_propagator_cache", None)
    if clear_cpp is not None:
        clear_cpp()
    try:
        from torch.distributed.tensor import DTensor, _collective_utils, _redistribute
    except ImportError:
        return
    propagator = getattr(getattr(DTensor, "_op_dispatcher", None), "sharding_propagator", None)
    caches = [
        getattr(propagator, "propagate_op_sharding", None),
        getattr(_redistribute, "_gen_transform_infos", None),
        getattr(getattr(_collective_utils, "MeshTopoInfo", None), "build_from_mesh", None),
    ]
    for cache in caches:
        if hasattr(cache, "cache_clear"):
            cache.cache_clear()
    planners = getattr(_redistribute, "_planner_cache", None)
    if isinstance(planners, dict):
        planners.clear()


def teardown() -> None:
    """Destroy the process group so that its threads end with it, not at interpreter exit.

    The group is freed (and its threads joined) when its last reference goes: DTensor's
    caches are emptied here, and whoever holds the model must drop it too.
    """
    if dist.is_available() and dist.is_initialized():
        _drop_mesh_caches()
        dist.destroy_process_group()


# ------------------------------------------------------------------------ wrapping


def _fsdp_units(model: nn.Module) -> list[nn.Module]:
    """Modules sharded as separate FSDP units: each trunk stage (timm RegNet: stem,
    s1..s4) and the head, so only one stage's parameters are gathered at a time."""
    units = [m for name, m in model.backbone.named_children() if any(True for _ in m.parameters())]
    return units + [model.head]


def wrap(model: nn.Module, cfg: Config, info: DistInfo, precision: str) -> nn.Module:
    """The module to call in the training loop: `model` itself (single process, FSDP2
    shards in place) or its DDP wrapper."""
    if cfg.train.sync_bn and info.world > 1:
        if info.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:
            warnings.warn("train.sync_bn needs CUDA (SyncBatchNorm has no CPU kernel); ignored", stacklevel=2)
    if info.mode == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        low = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        policy = MixedPrecisionPolicy(param_dtype=low, reduce_dtype=torch.float32 if low else None)
        fp32 = MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32)
        if low is not None:
            # BatchNorm keeps fp32 parameters next to its fp32 running statistics (VISSL's
            # auto_wrap_bn): each BN is its own small fp32 unit; autocast (enabled by the
            # loop) casts the activations back to bf16 for the next convolution.
            for bn in [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]:
                fully_shard(bn, mp_policy=fp32)
        for unit in _fsdp_units(model):
            fully_shard(unit, mp_policy=policy)
        # Prototypes stay fp32 in compute and reduction (VISSL found this matters).
        fully_shard(model.prototypes, mp_policy=fp32)
        fully_shard(model, mp_policy=policy)
        return model
    if info.mode == "ddp":
        ids = [info.device.index] if info.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)
    return model


# ------------------------------------------------------------------------ state dicts

_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Full, unsharded state dict on CPU (on rank 0; other ranks may get {})."""
    return get_model_state_dict(model, options=_FULL)


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=True))


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Full optimizer state for rank 0 to save. Collective: call on every rank."""
    if isinstance(optimizer, ZeroRedundancyOptimizer):
        optimizer.consolidate_state_dict(to=0)
        return optimizer.state_dict() if dist.get_rank() == 0 else {}
    return get_optimizer_state_dict(model, optimizer, options=_FULL)


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    if isinstance(optimizer, ZeroRedundancyOptimizer):
        optimizer.load_state_dict(state)
        return
    # A parameter that never had a gradient has no optimizer state, such as the prototypes
    # during swav.freeze_prototypes_steps: strict=False lets such a checkpoint load.
    options = StateDictOptions(full_state_dict=True, strict=False)
    set_optimizer_state_dict(model, optimizer, state, options=options)
    # Loading gives every parameter state first (torch steps once with zero gradients); a
    # parameter the checkpoint has none for must have none, as in the uninterrupted run,
    # or AdamW's step count (its bias correction) runs one ahead once it is unfrozen.
    for name, param in model.named_parameters():
        if name not in state["state"]:
            optimizer.state.pop(param, None)


def gather_to_main(obj, info: DistInfo) -> list | None:
    """Every rank's `obj` on rank 0 (None elsewhere)."""
    if not info.initialized:
        return [obj]
    out = [None] * info.world if info.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_from_main(obj, info: DistInfo):
    if not info.initialized:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True on every rank when `flag` is True on at least one (one small all_reduce)."""
    if not info.initialized or info.world == 1:
        return flag
    t = torch.tensor([float(flag)], device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier(info: DistInfo) -> None:
    if info.initialized:
        dist.barrier()
