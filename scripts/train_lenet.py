"""Train the bundled LeNet-300-100 (784-300-100-10, ReLU, 266,610 parameters) on the bundled digits, from a seed.

    python scripts/train_lenet.py [--seed 0] [--epochs 30] [--out dcframe/data/lenet_300_100.safetensors]

Adam (lr 1e-3), batches of 32, L2 weight decay 1e-4, He initialisation; numpy only (dcframe.analysis.mlp). The same seed gives
the same weights on the same numpy/BLAS build.
"""

from __future__ import annotations

import argparse

import numpy as np

from dcframe import write_model
from dcframe.analysis.demo import MODEL, load_digits
from dcframe.analysis.mlp import accuracy, init_params, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--out", default=str(MODEL))
    args = parser.parse_args()
    x_train, y_train, x_test, y_test = load_digits()
    params = init_params((784, 300, 100, 10), seed=args.seed)
    params = train(params, x_train, y_train, epochs=args.epochs, lr=1e-3, batch_size=32, weight_decay=1e-4,
                   seed=args.seed, on_epoch=lambda e, loss: print(f"epoch {e:3d}  loss {loss:.4f}"))
    count = sum(v.size for v in params.values())
    write_model(args.out, {k: np.ascontiguousarray(v, np.float32) for k, v in params.items()})
    print(f"wrote {args.out}: {count:,} parameters, train accuracy {accuracy(params, x_train, y_train):.2%}, "
          f"test accuracy {accuracy(params, x_test, y_test):.2%}")


if __name__ == "__main__":
    main()
