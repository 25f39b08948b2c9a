//! The shape of an image, shared by the networks, the datasets and the pictures.

use serde::{Deserialize, Serialize};

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
}
