//! Bounded reads of the bodies of services the gateway calls (JWKS and OIDC discovery
//! documents, entity records, the answers of usage sinks and webhook receivers): a peer that
//! sends more than the gateway will use is cut off there, never buffered whole.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum BodyError {
    #[error("larger than {max} bytes")]
    TooLarge { max: usize },
    #[error("{0}")]
    Read(#[source] reqwest::Error),
}

/// The whole body, or [`BodyError::TooLarge`] as soon as it (or its announced length) is over
/// `max` bytes.
pub async fn read_capped(
    mut response: reqwest::Response,
    max: usize,
) -> Result<Vec<u8>, BodyError> {
    if response
        .content_length()
        .is_some_and(|length| length > max as u64)
    {
        return Err(BodyError::TooLarge { max });
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(BodyError::Read)? {
        if body.len() + chunk.len() > max {
            return Err(BodyError::TooLarge { max });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The first `max` bytes of the body as text (lossy), for an error message; the rest is not
/// read, and a failure to read it only shortens the text.
pub async fn read_prefix(mut response: reqwest::Response, max: usize) -> String {
    let mut body = Vec::new();
    while body.len() < max {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    body.truncate(max);
    String::from_utf8_lossy(&body).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A response whose body arrives in `chunks` of `size` bytes, without a length announced.
    fn streamed(chunks: usize, size: usize) -> reqwest::Response {
        let parts = (0..chunks).map(move |_| Ok::<_, std::io::Error>(vec![b'x'; size]));
        let body = reqwest::Body::wrap_stream(futures_util::stream::iter(parts));
        reqwest::Response::from(http::Response::new(body))
    }

    #[tokio::test]
    async fn bodies_over_the_cap_are_refused_by_their_length_or_as_they_arrive() {
        let announced = reqwest::Response::from(http::Response::new(vec![b'x'; 11]));
        assert!(matches!(
            read_capped(announced, 10).await,
            Err(BodyError::TooLarge { max: 10 })
        ));
        let err = read_capped(streamed(100, 1000), 64 * 1024)
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "larger than 65536 bytes");
        assert_eq!(
            read_capped(streamed(64, 1024), 64 * 1024)
                .await
                .unwrap()
                .len(),
            65536
        );
    }

    #[tokio::test]
    async fn a_prefix_reads_no_further_than_it_needs() {
        assert_eq!(read_prefix(streamed(1_000_000, 1000), 500).await.len(), 500);
        let short = reqwest::Response::from(http::Response::new("no such tenant"));
        assert_eq!(read_prefix(short, 500).await, "no such tenant");
    }
}
