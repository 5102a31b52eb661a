"""A CNN on synthetic 16x16 images (10 classes): argparse arguments, train_one_epoch and
evaluate from engine.py, a StepLR scheduler. A plain script: no hindlog in it."""

import argparse

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

from engine import evaluate, train_one_epoch


def build_model(width):
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.2), nn.Linear(2 * width * 4 * 4, 10),
    )


def main():
    parser = argparse.ArgumentParser(description="CNN on synthetic images")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--samples", type=int, default=8192)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    torch.manual_seed(0)
    n = args.samples
    templates = torch.randn(10, 1, 16, 16)
    labels = torch.randint(0, 10, (n + n // 4,))
    images = templates[labels] + 1.5 * torch.randn(n + n // 4, 1, 16, 16)
    train_loader = DataLoader(TensorDataset(images[:n], labels[:n]), batch_size=args.batch_size, shuffle=True)
    val_loader = DataLoader(TensorDataset(images[n:], labels[n:]), batch_size=256)
    model = build_model(args.width)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    for epoch in range(args.epochs):
        train_loss = train_one_epoch(model, train_loader, opt)
        sched.step()
        val_loss, acc = evaluate(model, val_loader)
        print(f"epoch {epoch} train {train_loss:.6f} val {val_loss:.6f} acc {acc:.4f}")
    print("done")


if __name__ == "__main__":
    main()
