"""Output-stride bookkeeping shared by every backbone (atrous convolution instead of striding).

DeepLabv3 (Chen et al., arXiv 2017) Sec. 3.2 / DeepLabv3+ (ECCV 2018) Sec. 3.1: once the
running stride reaches the target output stride, each later strided unit runs with stride 1
and the dilation ("atrous") rate is multiplied by the stride it no longer applies. The unit
that loses its stride keeps the rate in force before it; the units after it use the new rate
(the reference DeepLab `stack_blocks_dense` rule, also what PSPNet and FastFCN's dilated
ResNets do).
"""

from keras_fusionseg.backbones.registry import check_output_stride


class AtrousSchedule:
    """Maps each unit's nominal stride to the (stride, dilation_rate) it runs with.

    Args:
        output_stride: int, 8, 16 or 32.

    Example:
    >>> schedule = AtrousSchedule(output_stride=8)
    >>> [schedule.next(s) for s in (2, 2, 2, 2, 1, 2, 1)]
    [(2, 1), (2, 1), (2, 1), (1, 1), (1, 2), (1, 2), (1, 4)]
    """

    def __init__(self, output_stride):
        check_output_stride(output_stride)
        self.output_stride = output_stride
        self.current_stride = 1
        self.rate = 1

    def next(self, stride):
        """Returns (stride, dilation_rate) for a unit of nominal `stride` and advances."""
        if stride > 1 and self.current_stride >= self.output_stride:
            rate = self.rate
            self.rate *= stride
            return 1, rate
        self.current_stride *= stride
        return stride, self.rate
