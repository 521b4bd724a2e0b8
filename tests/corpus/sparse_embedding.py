"""A bag-of-words classifier with a sparse embedding trained by SparseAdam and a dense head by Adam."""
import sys

import torch
from torch import nn
from torch.nn import functional as F


class BagOfWords(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(200, 16, sparse=True)
        self.head = nn.Linear(16, 2)

    def forward(self, tokens):
        return self.head(self.embed(tokens).mean(1))


torch.manual_seed(0)
model = BagOfWords()
sparse_opt = torch.optim.SparseAdam(list(model.embed.parameters()), lr=1e-2)
dense_opt = torch.optim.Adam(model.head.parameters(), lr=1e-2)
for step in range(80):
    y = torch.randint(0, 2, (32,))
    tokens = torch.randint(0, 100, (32, 12)) + 100 * y[:, None]  # each class its own vocabulary
    sparse_opt.zero_grad()
    dense_opt.zero_grad()
    F.cross_entropy(model(tokens), y).backward()
    sparse_opt.step()
    dense_opt.step()
torch.save({"model": model.state_dict()}, sys.argv[1])
