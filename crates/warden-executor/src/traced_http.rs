//! The HTTP client of Streamable HTTP upstreams, with trace context: a `tools/call` whose
//! `_meta` carries a W3C `traceparent` (set by [`crate::execution`] when the call is traced)
//! is also sent with that value as the `traceparent` HTTP header, so an upstream instrumented
//! at the HTTP layer continues the same trace. Everything else is the reqwest client's own
//! behaviour ([`crate::tls`]), unchanged.

use std::collections::HashMap;
use std::sync::Arc;

use futures::stream::BoxStream;
use http::{HeaderName, HeaderValue};
use rmcp::model::{ClientJsonRpcMessage, ClientRequest, JsonRpcMessage, RequestParamsMeta as _};
use rmcp::transport::streamable_http_client::{
    SseError, StreamableHttpClient, StreamableHttpError, StreamableHttpPostResponse,
};
use sse_stream::Sse;

/// A reqwest client that passes a call's `traceparent` on as an HTTP header.
#[derive(Clone, Debug)]
pub(crate) struct TracedClient(pub(crate) reqwest::Client);

/// The `traceparent` of `message`, if it is a `tools/call` that carries a valid one.
fn traceparent(message: &ClientJsonRpcMessage) -> Option<HeaderValue> {
    let JsonRpcMessage::Request(r) = message else {
        return None;
    };
    let ClientRequest::CallToolRequest(call) = &r.request else {
        return None;
    };
    let value = call.params.traceparent()?;
    // Only a well-formed value becomes a header (Warden wrote it; this is a second look).
    warden_core::trace::TraceParent::parse(value)?;
    HeaderValue::from_str(value).ok()
}

impl StreamableHttpClient for TracedClient {
    type Error = reqwest::Error;

    async fn post_message(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        mut custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<StreamableHttpPostResponse, StreamableHttpError<Self::Error>> {
        if let Some(v) = traceparent(&message) {
            custom_headers.insert(HeaderName::from_static("traceparent"), v);
        }
        self.0
            .post_message(uri, message, session_id, auth_header, custom_headers)
            .await
    }

    async fn post_message_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        mut custom_headers: HashMap<HeaderName, HeaderValue>,
        max_sse_event_size: usize,
    ) -> Result<StreamableHttpPostResponse, StreamableHttpError<Self::Error>> {
        if let Some(v) = traceparent(&message) {
            custom_headers.insert(HeaderName::from_static("traceparent"), v);
        }
        self.0
            .post_message_with_max_sse_event_size(
                uri,
                message,
                session_id,
                auth_header,
                custom_headers,
                max_sse_event_size,
            )
            .await
    }

    async fn delete_session(
        &self,
        uri: Arc<str>,
        session_id: Arc<str>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<(), StreamableHttpError<Self::Error>> {
        self.0
            .delete_session(uri, session_id, auth_header, custom_headers)
            .await
    }

    async fn get_stream(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<BoxStream<'static, Result<Sse, SseError>>, StreamableHttpError<Self::Error>> {
        self.0
            .get_stream(uri, session_id, last_event_id, auth_header, custom_headers)
            .await
    }

    async fn get_stream_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        max_sse_event_size: usize,
    ) -> Result<BoxStream<'static, Result<Sse, SseError>>, StreamableHttpError<Self::Error>> {
        self.0
            .get_stream_with_max_sse_event_size(
                uri,
                session_id,
                last_event_id,
                auth_header,
                custom_headers,
                max_sse_event_size,
            )
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(meta: Option<&str>) -> ClientJsonRpcMessage {
        let mut params = rmcp::model::CallToolRequestParams::new("echo");
        if let Some(v) = meta {
            params.set_traceparent(v);
        }
        ClientJsonRpcMessage::request(
            ClientRequest::CallToolRequest(rmcp::model::CallToolRequest::new(params)),
            rmcp::model::NumberOrString::Number(1),
        )
    }

    #[test]
    fn a_traced_call_names_its_traceparent_and_nothing_else_does() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            traceparent(&call(Some(tp)))
                .as_ref()
                .map(HeaderValue::as_bytes),
            Some(tp.as_bytes())
        );
        assert_eq!(traceparent(&call(None)), None);
        // A malformed value (it could carry a header injection) never becomes a header.
        assert_eq!(traceparent(&call(Some("00-x\r\nX-Evil: 1"))), None);
    }
}
