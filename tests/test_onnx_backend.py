"""ONNX's own conformance cases (the onnx.backend.test node cases of the DLA's operators) through
the SDK's compile-and-run path: see tests/onnx_backend.py for the adapter and the outcomes.

Every case passes -- Run_th (float32) within the case's own rtol/atol and Run (the DLA program on
the functional model) within the SDK budget, mean <= 1 %, max <= 5 % of max |reference| -- or is
listed below with its reason, and then Compile (or Run) must refuse it with a clear error whose
message matches the reason. A listed case that starts passing fails too, so the list (and
docs/conformance.md, written by scripts/onnx_backend_report.py) stays true."""
import re

import pytest

from tests import onnx_backend as ob

#: reason -> (what the refusal's message must match, why the DLA does not run these cases)
REASONS = {
    "rank": (r"the DLA takes NCHW images \(rank 4\)|only 2-D transposed|"
             r"a fully connected layer takes a \(1, K\) input",
             "tensors of rank 1 or 5 (3-D data, unbatched vectors), or of rank 3 where an operator's meaning depends "
             "on the rank: the DLA takes NCHW images, NCL sequences as (N, C, L, 1) images (compiler/lift1d.py) and "
             "(1, N) vectors"),
    "dtype": (r"has element type U?INT\d+; the DLA takes float tensors",
              "integer tensors: the runtime converts float inputs to the DLA's fixed point"),
    "nothing": (r"the model has no layer that runs on the DLA",
                "nothing to compute: only a view or copy of the inputs (Reshape, Flatten, Identity, Dropout, "
                "Concat), which is no DLA program"),
    "resize_factor": (r"only integer upsampling factors",
                      "Resize by non-integer factors or downsampling: only integer upsampling maps onto convolutions"),
    "resize_mode": (r"mode '\w+' is not supported; only nearest and linear|coordinate_transformation_mode '\w+' is not supported",
                    "cubic interpolation, align_corners, tf_crop_and_resize: weights that vary across the map are "
                    "no convolution"),
    "indices": (r"only the first output of MaxPool", "MaxPool's Indices output"),
    "dilation": (r"dilations \[\d+, \d+\] are not supported; only dilations 1",
                 "dilated pooling and dilated ConvTranspose"),
    "gemm": (r"transA=1 is not supported|bias C has shape",
             "Gemm with a transposed input or a per-row bias: the DLA's fully connected layer is x (1, K) times "
             "constant weights plus a per-output bias"),
    "sum3": (r"Sum of 3 inputs", "Sum of three tensors (one residual per layer)"),
    "output_shape": (r"output_shape \[[\d, ]+\] is larger", "ConvTranspose output_shape that needs negative pads"),
    "clip_bounds": (r"min \d+ is greater than max \d+", "Clip with min > max is refused as a model error"),
}

#: reason -> the cases refused for it
REFUSED = {
    "rank": [
        "test_add_bcast", "test_averagepool_3d_default",
        "test_averagepool_3d_dilations_large_count_include_pad_is_0_ceil_mode_is_False",
        "test_averagepool_3d_dilations_large_count_include_pad_is_0_ceil_mode_is_True",
        "test_averagepool_3d_dilations_large_count_include_pad_is_1_ceil_mode_is_False",
        "test_averagepool_3d_dilations_large_count_include_pad_is_1_ceil_mode_is_True",
        "test_averagepool_3d_dilations_small", "test_clip_default_inbounds",
        "test_clip_example", "test_clip_inbounds", "test_clip_outbounds",
        "test_clip_splitbounds", "test_convtranspose_3d",
        "test_leakyrelu_example", "test_matmul_1d_1d", "test_matmul_1d_3d",
        "test_matmul_3d", "test_matmul_4d", "test_matmul_4d_1d", "test_matmul_bcast",
        "test_maxpool_3d_default", "test_maxpool_3d_dilations", "test_maxpool_3d_dilations_use_ref_impl",
        "test_maxpool_3d_dilations_use_ref_impl_large", "test_mul_bcast", "test_mul_example",
        "test_sigmoid_example", "test_sum_one_input", "test_sum_two_inputs",
        "test_tanh_example",
    ],
    "dtype": [
        "test_add_int16", "test_add_int8", "test_add_uint16", "test_add_uint32", "test_add_uint64",
        "test_add_uint8", "test_clip_default_int8_inbounds", "test_clip_default_int8_max",
        "test_clip_default_int8_min", "test_maxpool_2d_uint8", "test_mul_int16", "test_mul_int8",
        "test_mul_uint16", "test_mul_uint32", "test_mul_uint64", "test_mul_uint8",
    ],
    "nothing": [
        "test_concat_1d_axis_0", "test_concat_1d_axis_negative_1", "test_concat_2d_axis_0",
        "test_concat_2d_axis_1", "test_concat_2d_axis_negative_1", "test_concat_2d_axis_negative_2",
        "test_concat_3d_axis_0", "test_concat_3d_axis_1", "test_concat_3d_axis_2",
        "test_concat_3d_axis_negative_1", "test_concat_3d_axis_negative_2", "test_concat_3d_axis_negative_3",
        "test_dropout_default", "test_dropout_default_mask", "test_dropout_default_mask_ratio",
        "test_dropout_default_old", "test_dropout_default_ratio", "test_dropout_random_old", "test_flatten_axis0",
        "test_flatten_axis1", "test_flatten_axis2", "test_flatten_axis3", "test_flatten_default_axis",
        "test_flatten_negative_axis1", "test_flatten_negative_axis2", "test_flatten_negative_axis3",
        "test_flatten_negative_axis4", "test_identity", "test_identity_opt", "test_identity_sequence",
        "test_reshape_allowzero_reordered", "test_reshape_extended_dims", "test_reshape_negative_dim",
        "test_reshape_negative_extended_dims", "test_reshape_one_dim", "test_reshape_reduced_dims",
        "test_reshape_reordered_all_dims", "test_reshape_reordered_last_dims",
        "test_reshape_zero_and_negative_dim", "test_reshape_zero_dim",
    ],
    "resize_factor": [
        "test_resize_downsample_scales_cubic", "test_resize_downsample_scales_cubic_A_n0p5_exclude_outside",
        "test_resize_downsample_scales_cubic_align_corners", "test_resize_downsample_scales_cubic_antialias",
        "test_resize_downsample_scales_linear", "test_resize_downsample_scales_linear_align_corners",
        "test_resize_downsample_scales_linear_antialias",
        "test_resize_downsample_scales_linear_half_pixel_symmetric", "test_resize_downsample_scales_nearest",
        "test_resize_downsample_sizes_cubic", "test_resize_downsample_sizes_cubic_antialias",
        "test_resize_downsample_sizes_linear_antialias", "test_resize_downsample_sizes_linear_pytorch_half_pixel",
        "test_resize_downsample_sizes_nearest", "test_resize_downsample_sizes_nearest_not_larger",
        "test_resize_downsample_sizes_nearest_not_smaller", "test_resize_tf_crop_and_resize",
        "test_resize_tf_crop_and_resize_axes_2_3", "test_resize_tf_crop_and_resize_axes_3_2",
        "test_resize_tf_crop_and_resize_extrapolation_value",
        "test_resize_upsample_scales_linear_half_pixel_symmetric", "test_resize_upsample_sizes_cubic",
        "test_resize_upsample_sizes_nearest", "test_resize_upsample_sizes_nearest_axes_2_3",
        "test_resize_upsample_sizes_nearest_axes_3_2", "test_resize_upsample_sizes_nearest_not_larger",
        "test_resize_upsample_sizes_nearest_not_smaller",
    ],
    "resize_mode": [
        "test_resize_upsample_scales_cubic", "test_resize_upsample_scales_cubic_A_n0p5_exclude_outside",
        "test_resize_upsample_scales_cubic_align_corners", "test_resize_upsample_scales_cubic_asymmetric",
        "test_resize_upsample_scales_linear_align_corners",
        "test_resize_upsample_sizes_nearest_floor_align_corners",
    ],
    "indices": [
        "test_maxpool_with_argmax_2d_precomputed_pads", "test_maxpool_with_argmax_2d_precomputed_strides",
    ],
    "dilation": [
        "test_averagepool_2d_dilations", "test_convtranspose_dilations", "test_maxpool_2d_dilations",
    ],
    "gemm": [
        "test_gemm_all_attributes", "test_gemm_default_matrix_bias", "test_gemm_transposeA",
    ],
    "sum3": [
        "test_sum_example",
    ],
    "output_shape": [
        "test_convtranspose_output_shape",
    ],
    "clip_bounds": [
        "test_clip_min_greater_than_max",
    ],
}

_REASON_OF = {name: reason for reason, names in REFUSED.items() for name in names}
CASES = ob.cases()


def test_every_listed_case_exists():
    names = {c.name for c in CASES}
    assert not set(_REASON_OF) - names, sorted(set(_REASON_OF) - names)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_case(case):
    outcome = ob.run_case(case)
    reason = _REASON_OF.get(case.name)
    if reason is None:
        assert outcome.status == "pass", f"{outcome.status}: {outcome.detail}"
        return
    assert outcome.status == "refused", (f"listed as refused ({REASONS[reason][1]}) but {outcome.status}: "
                                         f"{outcome.detail}; update REFUSED and docs/conformance.md")
    assert re.search(REASONS[reason][0], outcome.detail), f"refused for another reason: {outcome.detail}"
