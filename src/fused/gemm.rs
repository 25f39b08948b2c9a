//! Matrix products on borrowed `f32` buffers, through the `gemm` crate that candle's own
//! matmul calls: the one place in the crate with `unsafe` code.
//!
//! Why not candle's matmul: it always allocates and zero-fills a fresh output, hands every
//! product to rayon's threads itself (waking them each time), and cannot accumulate into a
//! buffer that already holds the bias. The fused linear layer needs the opposite of all
//! three: it writes `x·Wᵀ` on top of the bias in the buffer it returns, and cuts each
//! product into column blocks that the threads take one at a time (`super::parallel`).
//!
//! # Soundness
//! [`MatRef`] and [`MatMut`] are strided views with lifetimes, built only from slices and
//! bounds-checked when built: every element a view can address lies inside the slice it
//! borrows. Sub-views keep that. A [`MatMut`] is built row-major from a `&mut [f32]`, so
//! distinct elements have distinct addresses, and it can only be split into disjoint
//! blocks, like `split_at_mut`. [`matmul`] checks the three shapes agree before it calls
//! `gemm::gemm`, whose contract is exactly that: in-bounds strided operands and a
//! destination that overlaps neither source (a `&mut` borrow cannot alias the `&`
//! borrows of the sources).

#![allow(unsafe_code)]

use std::marker::PhantomData;
use std::ops::Range;

use candle_core::bail;

/// A read-only strided `rows × cols` view: element (i, j) at `ptr + i·rs + j·cs`.
#[derive(Clone, Copy)]
pub(crate) struct MatRef<'a> {
    ptr: *const f32,
    rows: usize,
    cols: usize,
    rs: isize,
    cs: isize,
    _borrow: PhantomData<&'a [f32]>,
}

// SAFETY: a MatRef is a shared borrow of `f32`s (which are Sync); sending or sharing it
// across threads is sharing a `&[f32]`.
unsafe impl Send for MatRef<'_> {}
// SAFETY: as above.
unsafe impl Sync for MatRef<'_> {}

impl<'a> MatRef<'a> {
    /// The row-major `rows × cols` matrix held in `data`.
    pub(crate) fn row_major(
        data: &'a [f32],
        rows: usize,
        cols: usize,
    ) -> candle_core::Result<Self> {
        if rows.checked_mul(cols) != Some(data.len()) {
            bail!("gemm: {} values for a {rows}x{cols} matrix", data.len())
        }
        Ok(Self {
            ptr: data.as_ptr(),
            rows,
            cols,
            rs: cols as isize,
            cs: 1,
            _borrow: PhantomData,
        })
    }

    /// The transpose (a view; nothing moves).
    pub(crate) fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    /// Columns `range` of the view.
    pub(crate) fn cols(self, range: Range<usize>) -> candle_core::Result<Self> {
        if range.start > range.end || range.end > self.cols {
            bail!(
                "gemm: columns {range:?} of a {}x{} view",
                self.rows,
                self.cols
            )
        }
        Ok(Self {
            // The offset stays inside the borrowed slice: column range.start exists or the
            // view is empty (and an empty view is never read).
            ptr: self.ptr.wrapping_offset(range.start as isize * self.cs),
            cols: range.end - range.start,
            ..self
        })
    }

    /// Rows `range` of the view.
    pub(crate) fn rows(self, range: Range<usize>) -> candle_core::Result<Self> {
        Ok(self.t().cols(range)?.t())
    }
}

/// A mutable row-major-derived `rows × cols` view: element (i, j) at `ptr + i·rs + j·cs`.
pub(crate) struct MatMut<'a> {
    ptr: *mut f32,
    rows: usize,
    cols: usize,
    rs: isize,
    cs: isize,
    _borrow: PhantomData<&'a mut [f32]>,
}

// SAFETY: a MatMut is a unique borrow of the `f32`s it addresses (no other view addresses
// them: it is built from a `&mut [f32]` and only split into disjoint blocks), so moving it
// to another thread is moving a `&mut [f32]`.
unsafe impl Send for MatMut<'_> {}

impl<'a> MatMut<'a> {
    /// The row-major `rows × cols` matrix held in `data`.
    pub(crate) fn row_major(
        data: &'a mut [f32],
        rows: usize,
        cols: usize,
    ) -> candle_core::Result<Self> {
        if rows.checked_mul(cols) != Some(data.len()) {
            bail!("gemm: {} values for a {rows}x{cols} matrix", data.len())
        }
        Ok(Self {
            ptr: data.as_mut_ptr(),
            rows,
            cols,
            rs: cols as isize,
            cs: 1,
            _borrow: PhantomData,
        })
    }

    /// Number of columns.
    pub(crate) fn cols(&self) -> usize {
        self.cols
    }

    /// Splits the view into the columns before `at` and the columns from `at` on.
    pub(crate) fn split_cols(self, at: usize) -> candle_core::Result<(Self, Self)> {
        if at > self.cols {
            bail!("gemm: split at column {at} of {}", self.cols)
        }
        let right = Self {
            ptr: self.ptr.wrapping_offset(at as isize * self.cs),
            cols: self.cols - at,
            _borrow: PhantomData,
            ..self
        };
        let left = Self {
            cols: at,
            _borrow: PhantomData,
            ..self
        };
        Ok((left, right))
    }

    /// Splits the view into column blocks of `width` (the last may be narrower).
    pub(crate) fn col_blocks(self, width: usize) -> candle_core::Result<Vec<(usize, Self)>> {
        let width = width.max(1);
        let mut blocks = Vec::with_capacity(self.cols.div_ceil(width));
        let mut rest = self;
        let mut start = 0;
        while rest.cols > width {
            let (block, tail) = rest.split_cols(width)?;
            blocks.push((start, block));
            start += width;
            rest = tail;
        }
        blocks.push((start, rest));
        Ok(blocks)
    }

    /// Applies `f` to every element, row by row.
    pub(crate) fn for_each_row(&mut self, mut f: impl FnMut(usize, &mut [f32])) {
        if self.cs != 1 {
            return;
        }
        for i in 0..self.rows {
            // SAFETY: with cs = 1, row i is the `cols` consecutive elements from
            // ptr + i·rs, all inside the borrowed slice (checked when the view was built,
            // kept by every split); this view is their only borrower, and `self` is
            // borrowed mutably for the duration of the call.
            let row = unsafe {
                std::slice::from_raw_parts_mut(
                    self.ptr.wrapping_offset(i as isize * self.rs),
                    self.cols,
                )
            };
            f(i, row);
        }
    }
}

/// dst ← a·b, or dst ← dst + a·b with `accumulate`, on this thread.
///
/// # Errors
/// If the shapes do not agree.
pub(crate) fn matmul(
    dst: &mut MatMut<'_>,
    a: MatRef<'_>,
    b: MatRef<'_>,
    accumulate: bool,
) -> candle_core::Result<()> {
    if a.rows != dst.rows || b.cols != dst.cols || a.cols != b.rows {
        bail!(
            "gemm: ({}x{}) · ({}x{}) into ({}x{})",
            a.rows,
            a.cols,
            b.rows,
            b.cols,
            dst.rows,
            dst.cols
        )
    }
    if dst.rows == 0 || dst.cols == 0 {
        return Ok(());
    }
    if a.cols == 0 {
        if !accumulate {
            dst.for_each_row(|_, row| row.fill(0.0));
        }
        return Ok(());
    }
    // SAFETY: every operand is a view whose addressable elements lie in its borrowed slice
    // (module docs); the shapes agree (checked above), so gemm reads a's rows × a.cols and
    // b's b.rows × cols elements and writes dst's rows × cols elements, all in bounds. dst
    // is a unique borrow, so it overlaps neither source. k = a.cols > 0.
    unsafe {
        gemm::gemm(
            dst.rows,
            dst.cols,
            a.cols,
            dst.ptr,
            dst.cs,
            dst.rs,
            accumulate,
            a.ptr,
            a.cs,
            a.rs,
            b.ptr,
            b.cs,
            b.rs,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The textbook triple loop.
    fn reference(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut c = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        c
    }

    fn values(len: usize, seed: f32) -> Vec<f32> {
        (0..len).map(|i| (i as f32 * 0.37 + seed).sin()).collect()
    }

    #[test]
    fn products_of_views_match_the_triple_loop() -> candle_core::Result<()> {
        let (m, k, n) = (37, 53, 29);
        let a = values(m * k, 0.1);
        let b = values(k * n, 0.7);
        let bt = values(n * k, 0.7); // b stored transposed, (n, k)
        let want = reference(&a, &b, m, k, n);
        // Plain, then through a transposed view, in column blocks, accumulating.
        let mut got = vec![0f32; m * n];
        matmul(
            &mut MatMut::row_major(&mut got, m, n)?,
            MatRef::row_major(&a, m, k)?,
            MatRef::row_major(&b, k, n)?,
            false,
        )?;
        let close = |x: &[f32], y: &[f32]| x.iter().zip(y).all(|(p, q)| (p - q).abs() < 1e-4);
        assert!(close(&got, &want));

        let mut bt_plain = vec![0f32; k * n];
        for p in 0..k {
            for j in 0..n {
                bt_plain[p * n + j] = bt[j * k + p];
            }
        }
        let want_t = reference(&a, &bt_plain, m, k, n);
        let mut got = vec![1f32; m * n];
        for (start, mut block) in MatMut::row_major(&mut got, m, n)?.col_blocks(8)? {
            let cols = block.cols;
            let b_view = MatRef::row_major(&bt, n, k)?
                .t()
                .cols(start..start + cols)?;
            matmul(&mut block, MatRef::row_major(&a, m, k)?, b_view, true)?;
        }
        let want_t: Vec<f32> = want_t.iter().map(|v| v + 1.0).collect();
        assert!(close(&got, &want_t));
        Ok(())
    }

    #[test]
    fn shape_errors_are_errors() -> candle_core::Result<()> {
        let a = values(6, 0.0);
        let mut c = vec![0f32; 4];
        let r = matmul(
            &mut MatMut::row_major(&mut c, 2, 2)?,
            MatRef::row_major(&a, 2, 3)?,
            MatRef::row_major(&a, 3, 2)?.t(),
            false,
        );
        assert!(r.is_err());
        assert!(MatRef::row_major(&a, 4, 2).is_err());
        assert!(MatRef::row_major(&a, 2, 3)?.cols(2..4).is_err());
        Ok(())
    }
}
