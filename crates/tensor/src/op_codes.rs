//! Numbers naming the elementwise and reduction ops. The GPU kernels take them as comptime
//! parameters (each op compiles to its own kernel); the host code names ops with them when it
//! dispatches to a GPU. Plain constants, so a host-only build compiles the same call sites.
#![cfg_attr(not(gpu), allow(dead_code))]

// Unary op codes (comptime: each op compiles to its own kernel).
pub(crate) const U_NEG: u32 = 0;
pub(crate) const U_EXP: u32 = 1;
pub(crate) const U_LOG: u32 = 2;
pub(crate) const U_SQRT: u32 = 3;
pub(crate) const U_RELU: u32 = 4;
pub(crate) const U_ABS: u32 = 5;
pub(crate) const U_CLAMP: u32 = 6;
pub(crate) const U_POWF: u32 = 7;
pub(crate) const U_ADD_SCALAR: u32 = 8;
pub(crate) const U_MUL_SCALAR: u32 = 9;
pub(crate) const U_RSQRT_EPS: u32 = 10;

// Binary op codes.
pub(crate) const B_ADD: u32 = 0;
pub(crate) const B_SUB: u32 = 1;
pub(crate) const B_MUL: u32 = 2;
pub(crate) const B_DIV: u32 = 3;
pub(crate) const B_MAX: u32 = 4;
pub(crate) const B_MIN: u32 = 5;
pub(crate) const B_RELU_MASK: u32 = 6;
pub(crate) const B_EQ: u32 = 7;

// Reduction op codes.
pub(crate) const R_SUM: u32 = 0;
pub(crate) const R_MAX: u32 = 1;
