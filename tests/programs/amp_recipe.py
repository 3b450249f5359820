"""Automatic mixed precision the way PyTorch's AMP recipe and most training scripts write it.

``torch.autocast(device_type="cuda", dtype=torch.float16, enabled=use_amp)``
around the forward pass and the loss (the recipe's asserts: the Linear output is
float16, the MSE loss float32), ``torch.amp.GradScaler("cuda", enabled=use_amp)``
with ``scale(loss).backward()``, ``unscale_`` before ``clip_grad_norm_``,
``step``/``update``, ``zero_grad(set_to_none=True)``, TF32 switches
(``torch.backends.cuda.matmul.allow_tf32``, ``torch.backends.cudnn.allow_tf32``),
the recipe's timer (``empty_cache``, ``reset_peak_memory_stats``,
``synchronize``, ``max_memory_allocated``), and a checkpoint holding the
scaler's state, resumed in the same process.

    python amp_recipe.py            # mixed precision
    python amp_recipe.py --no-amp   # the float32 baseline
"""
import argparse
import gc
import time

import torch

parser = argparse.ArgumentParser()
parser.add_argument("--no-amp", action="store_true")
parser.add_argument("--epochs", type=int, default=3)
parser.add_argument("--ckpt", type=str, default="amp_checkpoint.pt")

start_time = None


def start_timer():
    global start_time
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    torch.cuda.synchronize()
    start_time = time.time()


def end_timer_and_print(local_msg):
    torch.cuda.synchronize()
    end_time = time.time()
    print("\n" + local_msg)
    print("Total execution time = {:.3f} sec".format(end_time - start_time))
    print("Max memory used by tensors = {} bytes".format(torch.cuda.max_memory_allocated()))


def make_model(in_size, out_size, num_layers):
    layers = []
    for _ in range(num_layers - 1):
        layers.append(torch.nn.Linear(in_size, in_size))
        layers.append(torch.nn.ReLU())
    layers.append(torch.nn.Linear(in_size, out_size))
    return torch.nn.Sequential(*tuple(layers)).cuda()


def main():
    args = parser.parse_args()
    use_amp = not args.no_amp
    torch.backends.cuda.matmul.allow_tf32 = False  # the baseline must be true float32
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    batch_size, in_size, out_size, num_layers, num_batches = 64, 128, 32, 3, 12
    device = "cuda"

    # Creates data in default precision: a learnable linear target.
    teacher = torch.randn(in_size, out_size) / in_size ** 0.5
    data = [torch.randn(batch_size, in_size, device=device) for _ in range(num_batches)]
    targets = [(x.cpu() @ teacher).to(device) for x in data]
    loss_fn = torch.nn.MSELoss().cuda()

    net = make_model(in_size, out_size, num_layers)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    start_timer()
    for epoch in range(args.epochs):
        epoch_loss = 0.0
        for input, target in zip(data, targets):
            with torch.autocast(device_type=device, dtype=torch.float16, enabled=use_amp):
                output = net(input)
                loss = loss_fn(output, target)
                if use_amp:
                    # output is float16 because linear layers autocast to float16.
                    assert output.dtype is torch.float16, output.dtype
                # loss is float32 because mse_loss layers autocast to float32.
                assert loss.dtype is torch.float32, loss.dtype
            scaler.scale(loss).backward()
            # Unscales the gradients of optimizer's assigned params in-place
            scaler.unscale_(opt)
            # Since the gradients of optimizer's assigned params are now unscaled, clips as usual.
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            epoch_loss += loss.item()
        print(f"epoch {epoch} loss {epoch_loss / num_batches:.6f} scale {scaler.get_scale():.1f}")
    end_timer_and_print("Mixed precision:" if use_amp else "Default precision:")

    checkpoint = {"model": net.state_dict(), "optimizer": opt.state_dict(), "scaler": scaler.state_dict()}
    torch.save(checkpoint, args.ckpt)

    dev = torch.cuda.current_device()
    checkpoint = torch.load(args.ckpt, map_location=lambda storage, loc: storage.cuda(dev))
    net = make_model(in_size, out_size, num_layers)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    net.load_state_dict(checkpoint["model"])
    opt.load_state_dict(checkpoint["optimizer"])
    scaler.load_state_dict(checkpoint["scaler"])
    with torch.no_grad(), torch.autocast(device_type=device, dtype=torch.float16, enabled=use_amp):
        final = sum(loss_fn(net(x), y).item() for x, y in zip(data, targets)) / num_batches
    print(f"resumed: scale {scaler.get_scale():.1f}, final loss {final:.6f}, "
          f"weights {next(net.parameters()).dtype}")


if __name__ == "__main__":
    main()
