//! Outgoing mail (password resets), through the operator's SMTP server.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("smtp_url: {0}")]
    Url(#[source] lettre::transport::smtp::Error),
    #[error("smtp_from: {0}")]
    From(#[source] lettre::address::AddressError),
    #[error("recipient: {0}")]
    Recipient(#[source] lettre::address::AddressError),
    #[error("message: {0}")]
    Message(#[from] lettre::error::Error),
    #[error("sending: {0}")]
    Send(#[source] lettre::transport::smtp::Error),
}

/// Sends password-reset e-mails.
pub struct Mailer {
    transport: lettre::AsyncSmtpTransport<lettre::Tokio1Executor>,
    from: lettre::message::Mailbox,
}

impl Mailer {
    pub fn new(url: &str, from: &str) -> Result<Self, MailError> {
        let transport = lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::from_url(url)
            .map_err(MailError::Url)?
            .timeout(Some(Duration::from_secs(20)))
            .build();
        let from = from.parse().map_err(MailError::From)?;
        Ok(Mailer { transport, from })
    }

    pub async fn send(&self, to: &str, subject: &str, body: String) -> Result<(), MailError> {
        use lettre::AsyncTransport;
        let message = lettre::Message::builder()
            .from(self.from.clone())
            .to(to.parse().map_err(MailError::Recipient)?)
            .subject(subject)
            .body(body)?;
        self.transport.send(message).await.map_err(MailError::Send)?;
        Ok(())
    }
}
