//! An upstream's transport whose log messages (`notifications/message`) are handed on as they
//! arrive, in order with its responses. rmcp runs each notification's handler as a task of its
//! own, apart from the response that follows it: a message an upstream sent just before a
//! call's result would then often reach the agent's client after the result, when the call's
//! stream over `/mcp` has closed. Taken here, where messages are read one at a time in the
//! order they came, a message is on its way to the client before the result is even read.

use rmcp::model::{JsonRpcMessage, ServerNotification};
use rmcp::service::{RoleClient, RxJsonRpcMessage, TxJsonRpcMessage};
use rmcp::transport::Transport;

/// `inner`, with its log messages handed to `asks` (and not to rmcp's handlers).
pub(crate) struct LogsInOrder<T> {
    inner: T,
    asks: Option<crate::client_requests::Asks>,
}

impl<T> LogsInOrder<T> {
    /// `inner`, whose log messages go to `asks` (dropped when the upstream is offered nothing
    /// of the agents' clients).
    pub(crate) fn new(inner: T, asks: Option<crate::client_requests::Asks>) -> Self {
        LogsInOrder { inner, asks }
    }
}

impl<T: Transport<RoleClient>> Transport<RoleClient> for LogsInOrder<T> {
    type Error = T::Error;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleClient>,
    ) -> impl std::future::Future<Output = Result<(), Self::Error>> + Send + 'static {
        self.inner.send(item)
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleClient>> {
        loop {
            let message = self.inner.receive().await?;
            if let JsonRpcMessage::Notification(n) = &message {
                if let ServerNotification::LoggingMessageNotification(l) = &n.notification {
                    if let Some(asks) = &self.asks {
                        asks.log(l.params.clone());
                    }
                    continue;
                }
            }
            return Some(message);
        }
    }

    fn close(&mut self) -> impl std::future::Future<Output = Result<(), Self::Error>> + Send {
        self.inner.close()
    }
}
