"""im2col and col2im (lab 3, "convolution as one matrix multiply").

im2col copies every k×k window of the zero-padded image into one row, so a convolution becomes a single GEMM:

    cols[(n, ho, wo), (i, j, c)] = x_pad[n, c, ho·s + i, wo·s + j]          (N·Ho·Wo rows, kh·kw·C columns)
    Ho = ⌊(H + 2p − kh) / s⌋ + 1,  Wo likewise

col2im is its adjoint (the backward of im2col): each entry of the columns is added back to the pixel it was copied
from, so a pixel that several windows share receives the sum of their entries; padding positions are dropped.

    x[n, c, h, w] = Σ over ho·s + i − p = h, wo·s + j − p = w of cols[(n, ho, wo), (i, j, c)]

Both work in channels-last order (c varies fastest): a window row is then kh·kw runs of C contiguous numbers, the
GEMM's output (N·Ho·Wo, C_out) is already an NHWC image, and a channels_last input needs no reordering at all.
For an image with few channels (runs of 1 or 3 numbers are slow to copy) the same matrix can be stored transposed,
positions innermost: each column is then one channel of the image shifted by (i, j), runs of a whole image row.
"""
import torch
import torch.nn.functional as F


def output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """How many windows fit along one side: ⌊(size + 2·padding − kernel) / stride⌋ + 1."""
    return (size + 2 * padding - kernel) // stride + 1


def im2col(x: torch.Tensor, kernel_size, stride, padding, positions_innermost: bool = False) -> torch.Tensor:
    """(N, C, H, W) image, any memory layout → (N·Ho·Wo, kh·kw·C) columns, rows (n, ho, wo), columns (i, j, c).

    The windows are an as_strided view of the padded image (no copy); reshaping them into columns is the one
    copy. positions_innermost lays the columns out transposed in memory (a (kh·kw·C, N·Ho·Wo) matrix seen through
    .t()): each column is then a shifted copy of one channel, long contiguous runs when C is small.
    """
    n, channels, height, width = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    out_h, out_w = output_size(height, kh, sh, ph), output_size(width, kw, sw, pw)
    if positions_innermost:
        padded = F.pad(x, (pw, pw, ph, ph)) if ph or pw else x
        s_n, s_c, s_h, s_w = padded.stride()
        windows = padded.as_strided((kh, kw, channels, n, out_h, out_w),
                                    (s_h, s_w, s_c, s_n, sh * s_h, sw * s_w), padded.storage_offset())
        return windows.reshape(kh * kw * channels, n * out_h * out_w).t()
    nhwc = x.permute(0, 2, 3, 1)
    if ph or pw:
        nhwc = F.pad(nhwc, (0, 0, pw, pw, ph, ph))  # a fresh contiguous NHWC tensor with the zero border
    s_n, s_h, s_w, s_c = nhwc.stride()
    windows = nhwc.as_strided((n, out_h, out_w, kh, kw, channels),
                              (s_n, sh * s_h, sw * s_w, s_h, s_w, s_c), nhwc.storage_offset())
    return windows.reshape(n * out_h * out_w, kh * kw * channels)


def col2im(cols: torch.Tensor, image_shape, kernel_size, stride, padding) -> torch.Tensor:
    """(N·Ho·Wo, kh·kw·C) columns → the (N, C, H, W) image they sum to.

    One padded buffer receives the kh·kw strided slices, one add per kernel offset (i, j): slice (i, j) of every
    window lands on the pixels x_pad[ho·s + i, wo·s + j], a strided grid that never repeats a pixel, so each add
    is a plain elementwise add. The buffer follows the columns' memory layout (channels_last for row-major
    columns, NCHW for transposed ones) so both sides of every add run contiguously; the border is then cut off
    (a view, not a copy).
    """
    n, channels, height, width = image_shape
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    out_h, out_w = output_size(height, kh, sh, ph), output_size(width, kw, sw, pw)
    windows = cols.view(n, out_h, out_w, kh, kw, channels).permute(0, 5, 1, 2, 3, 4)  # (n, c, ho, wo, i, j)
    positions_innermost = cols.stride(0) == 1 and cols.shape[1] > 1
    memory_format = torch.contiguous_format if positions_innermost else torch.channels_last
    padded = torch.empty(n, channels, height + 2 * ph, width + 2 * pw, dtype=cols.dtype, device=cols.device,
                         memory_format=memory_format).zero_()
    for i in range(kh):
        rows = slice(i, i + sh * (out_h - 1) + 1, sh)
        for j in range(kw):
            padded[:, :, rows, j:j + sw * (out_w - 1) + 1:sw].add_(windows[..., i, j])
    return padded[:, :, ph:ph + height, pw:pw + width]
