"""Two data-parallel ranks (gloo on CPU): thresholds and renormalisation are mini-batch-global.

Each rank holds half of a mini-batch. The masks must equal those computed on the whole
mini-batch in one process, and the DP-averaged gradient (what FSDP applies) must equal the
one-process gradient.
"""

import os
import tempfile

import pytest
import torch
import torch.multiprocessing as mp
from conftest import MiniBatch, actor_config, run_minibatch

from stapo_verl.integration.token_mask import flat_tokens

CASES = {
    "stapo": dict(loss_mode="stapo", tau_prob=0.05, stats_source="old"),
    # each rank's fresh pass covers only its rows that can hold a candidate
    "stapo_current": dict(loss_mode="stapo", tau_prob=0.05, stats_source="current"),
    "entropy20": dict(loss_mode="entropy20", top_entropy_ratio=0.2, stats_source="old"),
    # masked in the loss; each rank's micro-batches here are the one-process run's, and the
    # renormalising kept-token count sums over ranks
    "entropy20_micro_batch": dict(loss_mode="entropy20", top_entropy_ratio=0.2, top_entropy_scope="micro_batch"),
    # one global choice among all ranks' candidates, not a per-rank one
    "stapo_high_entropy": dict(
        loss_mode="stapo", tau_prob=0.05, stats_source="old", candidate_selection="high_entropy"
    ),
    "stapo_random": dict(loss_mode="stapo", tau_prob=0.05, stats_source="old", candidate_selection="random"),
}
N_SEQS, WORLD = 8, 2


def _rank_main(rank, store, out_dir, case):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    batch = MiniBatch(seed=21, n_seqs=N_SEQS)
    rows = list(range(rank * N_SEQS // WORLD, (rank + 1) * N_SEQS // WORLD))
    data = batch.tensordict(global_batch_size=N_SEQS, rows=rows)
    data, output = run_minibatch(
        batch, actor_config(**CASES[case]), micro_batch_size=2, data=data, group=dist.group.WORLD
    )
    torch.save(
        {"keep": flat_tokens(data["response_mask"]).bool(), "grad": batch.theta.grad, "metrics": output["metrics"]},
        os.path.join(out_dir, f"rank{rank}.pt"),
    )
    dist.destroy_process_group()


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.slow
def test_two_ranks_match_one_process(case, process_group):
    out_dir = tempfile.mkdtemp()
    mp.spawn(_rank_main, args=(os.path.join(out_dir, "store"), out_dir, case), nprocs=WORLD, join=True)
    ranks = [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=False) for r in range(WORLD)]

    batch = MiniBatch(seed=21, n_seqs=N_SEQS)
    data, output = run_minibatch(batch, actor_config(**CASES[case]), micro_batch_size=2)
    keep = flat_tokens(data["response_mask"]).bool()
    assert 0 < int(keep.sum()) < keep.numel()
    assert torch.equal(torch.cat([r["keep"] for r in ranks]), keep)
    dp_mean_grad = sum(r["grad"] for r in ranks) / WORLD  # FSDP averages gradients over ranks
    assert torch.allclose(dp_mean_grad, batch.theta.grad, rtol=1e-9, atol=1e-15)
    for key in ("s2t/silenced", "s2t/tau_entropy", "entropy20/kept_tokens", "entropy20/entropy_threshold"):
        if key in output["metrics"]:  # global metrics: the same number on every rank
            assert all(r["metrics"][key][0] == pytest.approx(output["metrics"][key][0]) for r in ranks)
    # how the candidates (kept tokens) fell on the ranks: on two ranks min + max is the total
    for total, spread in (
        ("s2t/candidates", "s2t/candidates_rank"),
        ("entropy20/kept_tokens", "entropy20/kept_tokens_rank"),
    ):
        if f"{spread}_max" in output["metrics"]:
            one = output["metrics"]
            assert one[f"{spread}_min"][0] == one[f"{spread}_max"][0] == one[total][0]  # one rank holds all
            low, high = ranks[0]["metrics"][f"{spread}_min"][0], ranks[0]["metrics"][f"{spread}_max"][0]
            assert low <= high and low + high == one[total][0]
