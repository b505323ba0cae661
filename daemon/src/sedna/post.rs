//! One JSON POST on a fresh HTTP/1.1 connection: how helmetd reaches Sedna's services (the big
//! model for a hard example, the Local Controller for a report). Both are rare, so no connection
//! is kept alive, and none can go stale.

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::header::{CONTENT_TYPE, HOST, HeaderMap};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;

#[derive(Debug)]
pub(crate) enum PostError {
    Connect(std::io::Error),
    Http(hyper::Error),
    /// The request could not be built (a path that is not a valid URI).
    Request(hyper::http::Error),
    /// The answer was larger than allowed or broke off.
    Body,
}

/// POSTs `body` as JSON with `headers` to `http://<authority><path>` and reads the answer, at
/// most `max_answer` bytes, with its headers. Dropping the future (a caller's timeout) closes the
/// socket, which is how a server that watches its connections learns the caller gave up.
pub(crate) async fn post_json(
    authority: &str,
    path: &str,
    headers: HeaderMap,
    body: Bytes,
    max_answer: usize,
) -> Result<(StatusCode, HeaderMap, Bytes), PostError> {
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(PostError::Connect)?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(PostError::Http)?;
    let connection = AbortOnDrop(tokio::spawn(connection));
    let mut request = Request::post(path)
        .header(HOST, authority)
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(body))
        .map_err(PostError::Request)?;
    request.headers_mut().extend(headers);
    let response = sender
        .send_request(request)
        .await
        .map_err(PostError::Http)?;
    let (parts, body) = response.into_parts();
    let answer = Limited::new(body, max_answer)
        .collect()
        .await
        .map_err(|_| PostError::Body)?
        .to_bytes();
    drop(connection);
    Ok((parts.status, parts.headers, answer))
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
