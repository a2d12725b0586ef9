"""The peer side of benchmarks/quality.py: DINO with the `lightly` package, in its own environment.

Run by quality.py with the interpreter of a separate venv that holds lightly and torchvision
(never this project's environment). It follows lightly's DINO example (projection head 512/64/2048,
DINOLoss, Adam 1e-3, teacher momentum cosine 0.996 -> 1, last layer frozen for the first epoch)
on a torchvision ViT of the same size as ours, wrapped in lightly's own ViT module so local
crops of another size work. Crop scales, blur, solarisation and colour-jitter probabilities are
arguments, so quality.py hands it the ones our run uses; the k-NN feature is the teacher's CLS
token, or CLS and the mean patch token (``--feature cls+avgpool``), as for ours. Training stops when its CPU-time budget is spent; the schedules are
laid over the step count measured to fit the budget. Writes the CLS features of the given
reference/query images to an .npz, plus timing.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time

import numpy as np
import torch
from PIL import Image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", required=True, help="folder of training PNGs")
    parser.add_argument("--eval", required=True, help=".npz with uint8 'train' and 'test' image arrays")
    parser.add_argument("--out", required=True, help="output .npz of features")
    parser.add_argument("--cpu-budget", type=float, required=True, help="CPU seconds of training")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--embed-dim", type=int, default=64)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--global-size", type=int, default=56)
    parser.add_argument("--local-size", type=int, default=28)
    parser.add_argument("--n-local", type=int, default=4)
    parser.add_argument("--patch-size", type=int, default=14)
    parser.add_argument("--global-scale", type=float, nargs=2, default=(0.4, 1.0))
    parser.add_argument("--local-scale", type=float, nargs=2, default=(0.05, 0.4))
    parser.add_argument("--jitter-p", type=float, default=0.8, help="colour jitter probability per crop")
    parser.add_argument("--blur-p", type=float, nargs=3, default=(1.0, 0.1, 0.5),
                        help="blur probability of global crop 1, global crop 2, local crops")
    parser.add_argument("--solarize-p", type=float, default=0.2, help="solarisation probability of global crop 2")
    parser.add_argument("--feature", choices=("cls", "cls+avgpool"), default="cls",
                        help="k-NN feature: the CLS token, or CLS and the mean patch token (each L2-normalised)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)

    from lightly.loss import DINOLoss
    from lightly.models.modules import DINOProjectionHead
    from lightly.models.modules.masked_vision_transformer_torchvision import MaskedVisionTransformerTorchvision
    from lightly.models.utils import deactivate_requires_grad, update_momentum
    from lightly.transforms.dino_transform import DINOTransform
    from lightly.utils.scheduler import cosine_schedule
    from torchvision.models.vision_transformer import VisionTransformer

    vit = VisionTransformer(image_size=args.global_size, patch_size=args.patch_size, num_layers=args.depth, num_heads=args.heads,
                            hidden_dim=args.embed_dim, mlp_dim=4 * args.embed_dim)
    student = MaskedVisionTransformerTorchvision(vit=vit)
    student_head = DINOProjectionHead(args.embed_dim, 512, 64, 2048, freeze_last_layer=1)
    teacher = copy.deepcopy(student)
    teacher_head = DINOProjectionHead(args.embed_dim, 512, 64, 2048)
    deactivate_requires_grad(teacher)
    deactivate_requires_grad(teacher_head)
    transform = DINOTransform(global_crop_size=args.global_size, local_crop_size=args.local_size,
                              n_local_views=args.n_local, global_crop_scale=tuple(args.global_scale),
                              local_crop_scale=tuple(args.local_scale), cj_prob=args.jitter_p,
                              gaussian_blur=tuple(args.blur_p), solarization_prob=args.solarize_p)
    criterion = DINOLoss(output_dim=2048, warmup_teacher_temp_epochs=5)
    params = list(student.parameters()) + list(student_head.parameters())
    optimizer = torch.optim.Adam(params, lr=0.001)

    files = sorted(os.listdir(args.images))
    rng = np.random.default_rng(args.seed)

    def batches():
        while True:
            for s in range(0, len(files) - args.batch_size + 1, args.batch_size):
                yield [files[i] for i in order[s : s + args.batch_size]]
            order[:] = rng.permutation(len(files))

    order = rng.permutation(len(files))
    stream = batches()

    def step(i: int, total: int) -> float:
        names = next(stream)
        views_per_image = [transform(Image.open(os.path.join(args.images, n)).convert("RGB")) for n in names]
        views = [torch.stack([v[k] for v in views_per_image]) for k in range(len(views_per_image[0]))]
        epoch = i * args.batch_size // len(files)
        momentum = cosine_schedule(i, max(total, 1), 0.996, 1.0)
        update_momentum(student, teacher, m=momentum)
        update_momentum(student_head, teacher_head, m=momentum)
        teacher_out = [teacher_head(teacher(v)) for v in views[:2]]
        student_out = [student_head(student(v)) for v in views]
        loss = criterion(teacher_out, student_out, epoch=epoch)
        loss.backward()
        student_head.cancel_last_layer_gradients(current_epoch=epoch)
        optimizer.step()
        optimizer.zero_grad()
        return float(loss)

    # Calibrate: CPU seconds per step over a few steps (they count against the budget).
    start = time.process_time()
    losses = [step(i, 400) for i in range(3)]
    per_step = (time.process_time() - start) / 3
    total = max(3, int(args.cpu_budget / per_step))
    for i in range(3, total):
        losses.append(step(i, total))
        if time.process_time() - start > args.cpu_budget * 1.05:
            break
    cpu = time.process_time() - start

    data = np.load(args.eval)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    @torch.no_grad()
    def features(images: np.ndarray) -> np.ndarray:
        teacher.eval()
        out = []
        for s in range(0, len(images), 256):
            x = torch.from_numpy(images[s : s + 256]).float().div(255)[:, None].expand(-1, 3, -1, -1)
            x = torch.nn.functional.interpolate(x, size=(args.global_size,) * 2, mode="bicubic", antialias=True)
            tokens = teacher.encode((x.clamp(0, 1) - mean) / std)
            cls = torch.nn.functional.normalize(tokens[:, 0], dim=1)
            if args.feature == "cls+avgpool":
                patches = torch.nn.functional.normalize(tokens[:, 1:].mean(1), dim=1)
                cls = torch.cat([cls, patches], dim=1)
            out.append(cls.numpy())
        return np.concatenate(out)

    np.savez(args.out, train=features(data["train"]), test=features(data["test"]))
    print(json.dumps({"steps": len(losses), "cpu_seconds": cpu, "first_loss": losses[0], "last_loss": losses[-1]}))


if __name__ == "__main__":
    main()
