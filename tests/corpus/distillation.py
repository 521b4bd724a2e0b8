"""Knowledge distillation: a fixed teacher (built first, in eval mode, never trained) and a
smaller student trained on the teacher's soft targets."""
import sys

import torch
from torch import nn
from torch.nn import functional as F

torch.manual_seed(0)
teacher = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Dropout(0.2), nn.Linear(64, 4)).eval()
for p in teacher.parameters():
    p.requires_grad_(False)
student = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
opt = torch.optim.Adam(student.parameters(), lr=3e-3)
for step in range(80):
    x = torch.randn(32, 8)
    with torch.no_grad():
        soft = F.softmax(teacher(x) / 2.0, dim=-1)
    loss = F.kl_div(F.log_softmax(student(x) / 2.0, dim=-1), soft, reduction="batchmean")
    opt.zero_grad()
    loss.backward()
    opt.step()
torch.save({"student": student.state_dict(), "teacher": teacher.state_dict()}, sys.argv[1])
