"""The same seed gives the same routing and output (jitter, expert dropout, random routers)."""

import torch

from moe_mt.moe import ExpertBank, MoEFeedForward, RandomRouter, TopKRouter, sentence_index_tbd


def run(seed, router_fn):
    torch.manual_seed(seed)
    layer = MoEFeedForward(router_fn(), ExpertBank(4, 8, 16, dropout=0.3), 1.0).train()
    x = torch.randn(3, 5, 8)
    out = layer.forward_tbd(x)
    return out.routing.expert_index, out.y


def test_topk_with_jitter_and_dropout_is_seeded():
    router_fn = lambda: TopKRouter(8, 4, k=2, jitter=0.1)  # noqa: E731
    index_a, y_a = run(0, router_fn)
    index_b, y_b = run(0, router_fn)
    assert torch.equal(index_a, index_b) and torch.equal(y_a, y_b)
    assert not torch.equal(y_a, run(1, router_fn)[1])


def test_random_router_is_seeded_at_every_granularity():
    for granularity in ("batch", "sentence", "token"):
        router_fn = lambda g=granularity: RandomRouter(4, granularity=g)  # noqa: E731
        index_a, y_a = run(0, router_fn)
        index_b, y_b = run(0, router_fn)
        assert torch.equal(index_a, index_b) and torch.equal(y_a, y_b)


def test_random_router_granularity():
    torch.manual_seed(0)
    n, b = 7, 5
    sentence = sentence_index_tbd(n, b)  # flat [b * n] as flatten_tbd lays it out
    x = torch.randn(n * b, 8)
    per_batch = RandomRouter(16, "batch")(x).expert_index[:, 0]
    assert (per_batch == per_batch[0]).all()
    per_sentence = RandomRouter(16, "sentence")(x, sentence_index=sentence).expert_index[:, 0]
    grid = per_sentence.view(b, n).t()
    assert (grid == grid[0]).all()  # one expert per sentence (column)
    assert len(set(grid[0].tolist())) > 1
    per_token = RandomRouter(16, "token")(x).expert_index[:, 0]
    assert len(set(per_token.tolist())) > 4


def test_seeded_generator_is_private_and_reproducible():
    x = torch.randn(12, 8)
    sentence = torch.arange(12)
    a = RandomRouter(8, "sentence", seed=123)
    b = RandomRouter(8, "sentence", seed=123)
    torch.manual_seed(0)
    first = a(x, sentence_index=sentence).expert_index
    torch.manual_seed(99)  # the global generator does not matter
    assert torch.equal(first, b(x, sentence_index=sentence).expert_index)
    assert not torch.equal(first, a(x, sentence_index=sentence).expert_index)  # it advances
