//! What the OpenAPI documents (admin, credits, usage) share.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

/// A bearer-token security scheme, added to a document with
/// `#[openapi(modifiers(&SCHEME))]`.
pub struct BearerScheme {
    /// The scheme's name, as the document's `security` entries name it.
    pub name: &'static str,
    /// Which token it is.
    pub description: &'static str,
}

impl utoipa::Modify for BearerScheme {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(self.description))
            .build();
        doc.components
            .get_or_insert_with(Default::default)
            .add_security_scheme(self.name, SecurityScheme::Http(scheme));
    }
}
