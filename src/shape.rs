//! The shape of an image, shared by the networks, the datasets and the pictures.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::Error;

/// The shape of one image: channels, height, width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageShape {
    /// Channels (1 for grayscale).
    pub channels: usize,
    /// Height in pixels.
    pub height: usize,
    /// Width in pixels.
    pub width: usize,
}

impl ImageShape {
    /// `channels × height × width`.
    pub fn new(channels: usize, height: usize, width: usize) -> Self {
        Self {
            channels,
            height,
            width,
        }
    }

    /// Number of values in one image (saturating at `usize::MAX`; the configs' `validate`
    /// refuses images of more than [`MAX_ELEMENTS`](crate::MAX_ELEMENTS) values).
    pub fn elem_count(&self) -> usize {
        self.channels
            .saturating_mul(self.height)
            .saturating_mul(self.width)
    }

    /// Checks that `xs` is a batch `(N, C, H, W)` of these images.
    ///
    /// # Errors
    /// [`Error::Shape`] naming `context` and the expected shape otherwise.
    pub(crate) fn check_batch(&self, context: &'static str, xs: &Tensor) -> crate::Result<()> {
        if xs.rank() != 4 || xs.dims()[1..] != [self.channels, self.height, self.width] {
            return Err(Error::shape(
                context,
                format!("(N, {}, {}, {})", self.channels, self.height, self.width),
                xs.dims(),
            ));
        }
        Ok(())
    }
}
