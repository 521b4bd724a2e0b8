"""Mean teacher: an EMA copy made by deepcopy, updated under no_grad, runs forward in every step
(consistency loss) and for validation; only the student is trained."""
import copy
import sys

import torch
from torch import nn
from torch.nn import functional as F

torch.manual_seed(0)
student = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 3))
teacher = copy.deepcopy(student)
for p in teacher.parameters():
    p.requires_grad_(False)
opt = torch.optim.Adam(student.parameters(), lr=3e-3)
centers = torch.randn(3, 8) * 2
for step in range(150):
    y = torch.randint(0, 3, (32,))
    x = centers[y] + torch.randn(32, 8)
    logits = student(x)
    with torch.no_grad():
        target = teacher(x + 0.1 * torch.randn_like(x)).softmax(-1)
    loss = F.cross_entropy(logits, y) + 0.5 * F.mse_loss(logits.softmax(-1), target)
    opt.zero_grad()
    loss.backward()
    opt.step()
    with torch.no_grad():
        for t, s in zip(teacher.parameters(), student.parameters()):
            t.mul_(0.99).add_(s, alpha=0.01)
    if step % 20 == 19:
        teacher.eval()
        with torch.no_grad():
            accuracy = (teacher(x).argmax(1) == y).float().mean()
        teacher.train()
torch.save({"student": student.state_dict(), "teacher": teacher.state_dict()}, sys.argv[1])
