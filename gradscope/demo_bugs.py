"""The mistakes `gradscope demo --bug` plants, by name (kept apart from the demo so that the
CLI can list them without importing torch)."""

BUGS = {
    "nan": "the input batch at step 30 contains an infinite pixel",
    "dead-relu": "fc1's bias starts at -20, so most of its ReLU units never fire",
    "no-zero-grad": "optimizer.zero_grad() is never called, so gradients pile up",
    "lr": "the learning rate is 50, far too high",
}
