//! Networks that can describe themselves as plain data and be built again from it: what
//! lets a model-only file ([`Vae::save_model`](crate::Vae::save_model)) be loaded without
//! the code that built the model ([`Vae::from_checkpoint`](crate::Vae::from_checkpoint)).

use candle_nn::VarBuilder;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A network whose architecture is plain data (its config) and whose tensors live under
/// one `VarBuilder` prefix.
///
/// The crate's [`MlpEncoder`](crate::MlpEncoder), [`MlpDecoder`](crate::MlpDecoder),
/// [`ConvEncoder`](crate::ConvEncoder) and [`ConvDecoder`](crate::ConvDecoder)
/// implement it; a user's network can too, and then loads from a file like them.
pub trait Architecture: Sized {
    /// The description: enough to build the same network again.
    type Spec: Serialize + DeserializeOwned;

    /// The network's kind, stored beside the spec so that a file of another kind is
    /// refused by name (`"MlpEncoder"`).
    const KIND: &'static str;

    /// This network's description.
    fn spec(&self) -> Self::Spec;

    /// The `VarBuilder` prefix its tensors were created under (`""` at the root).
    fn prefix(&self) -> &str;

    /// Builds the network described by `spec`, its tensors under `vb` (already at the
    /// network's prefix).
    ///
    /// # Errors
    /// As the network's constructor.
    fn build(spec: &Self::Spec, vb: VarBuilder) -> crate::Result<Self>;
}

/// `vb` moved to `prefix` (`""` is `vb` itself).
pub(crate) fn at_prefix<'a>(vb: &VarBuilder<'a>, prefix: &str) -> VarBuilder<'a> {
    if prefix.is_empty() {
        vb.clone()
    } else {
        vb.pp(prefix)
    }
}
