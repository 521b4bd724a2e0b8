"""Bag-of-words classifier with sparse embedding gradients (`nn.Embedding(sparse=True)`) trained
by `SparseAdam`, the dense head by Adam: two optimizers, sparse gradients every step."""
import sys

import torch
from torch import nn
from torch.nn import functional as F

torch.manual_seed(0)
VOCAB, DIM, CLASSES = 200, 16, 4
embed = nn.Embedding(VOCAB, DIM, sparse=True)
head = nn.Linear(DIM, CLASSES)
sparse_opt = torch.optim.SparseAdam(list(embed.parameters()), lr=1e-2)
dense_opt = torch.optim.Adam(head.parameters(), lr=1e-2)
for step in range(120):
    tokens = torch.randint(0, VOCAB, (32, 10))
    labels = tokens[:, 0] % CLASSES  # the first token decides the class
    sparse_opt.zero_grad()
    dense_opt.zero_grad()
    F.cross_entropy(head(embed(tokens).mean(1)), labels).backward()
    sparse_opt.step()
    dense_opt.step()
torch.save({"embed": embed.state_dict(), "head": head.state_dict()}, sys.argv[1])
