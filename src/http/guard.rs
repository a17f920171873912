//! The service as the connection layer calls it: a panic in the service's code (a bug) costs
//! the one request it was serving, never a thread and never a connection slot.
//!
//! Every call the layer makes, on the I/O thread or on a handler thread, goes through
//! [`Guarded`]: a panicking [`Service::admit`] or [`Service::serve`] is answered with the
//! service's own 500 refusal, and a panicking [`Service::reject`] (the code that renders a
//! refusal, a 500 included) with a plain-text answer of the same status made here, which
//! cannot panic. So the I/O thread never unwinds out of service code (it would take every
//! connection with it), and a request at a handler always comes back with an answer (a
//! connection whose request never came back would hold its slot with no deadline).

use crate::http::{Admission, HttpError, Request, RequestHead, Response, Service, StatusCode};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

/// `service`, with every call's panic turned into an answer.
pub(crate) struct Guarded(pub(crate) Arc<dyn Service>);

impl Service for Guarded {
    fn admit(&self, head: &RequestHead) -> Admission {
        catch_unwind(AssertUnwindSafe(|| self.0.admit(head))).unwrap_or_else(|_| {
            log::error!(
                "the API's admission check panicked on {} {}",
                head.method,
                head.path
            );
            let mut response = self.reject(&internal());
            // The body, if one was announced, was not read.
            response.close = true;
            Admission::Answer(response)
        })
    }

    fn serve(&self, request: Request) -> Response {
        let (method, path) = (request.head.method.clone(), request.head.path.clone());
        catch_unwind(AssertUnwindSafe(|| self.0.serve(request))).unwrap_or_else(|_| {
            log::error!("the API's handler panicked on {method} {path}");
            self.reject(&internal())
        })
    }

    fn reject(&self, error: &HttpError) -> Response {
        catch_unwind(AssertUnwindSafe(|| self.0.reject(error))).unwrap_or_else(|_| {
            log::error!("rendering the API's refusal panicked: {error}");
            plain(error)
        })
    }
}

/// What a handler's or an admission's panic is answered with.
pub(crate) fn internal() -> HttpError {
    HttpError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "internal error; see the agent's log",
    )
}

/// `error` as plain text, the connection closed after it: the answer when the service could
/// not render it.
pub(crate) fn plain(error: &HttpError) -> Response {
    let mut response = Response::new(error.status, format!("{error}\n").into_bytes())
        .with_header("Content-Type", "text/plain; charset=utf-8")
        .with_header("Cache-Control", "no-store");
    response.close = true;
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{BodyLength, Headers, Lane, Method};

    /// Panics on every call.
    struct Broken;

    impl Service for Broken {
        fn admit(&self, _: &RequestHead) -> Admission {
            panic!("admit")
        }
        fn serve(&self, _: Request) -> Response {
            panic!("serve")
        }
        fn reject(&self, _: &HttpError) -> Response {
            panic!("reject")
        }
    }

    /// Answers 200 and renders refusals as `code` alone.
    struct Fine;

    impl Service for Fine {
        fn admit(&self, _: &RequestHead) -> Admission {
            Admission::Serve(Lane::Quick)
        }
        fn serve(&self, _: Request) -> Response {
            Response::new(StatusCode::OK, b"ok".to_vec())
        }
        fn reject(&self, error: &HttpError) -> Response {
            Response::new(error.status, error.code.as_bytes().to_vec())
        }
    }

    fn head() -> RequestHead {
        RequestHead {
            method: Method::GET,
            path: "/x".into(),
            query: None,
            minor_version: 1,
            headers: Headers::default(),
            body_length: BodyLength::Empty,
            peer: "127.0.0.1:1".parse().unwrap(),
        }
    }

    #[test]
    fn every_panic_becomes_an_answer_and_a_working_service_is_left_alone() {
        let broken = Guarded(Arc::new(Broken));
        let Admission::Answer(answer) = broken.admit(&head()) else {
            panic!("a panicking admission was not answered");
        };
        assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(answer.close);
        let answer = broken.serve(Request {
            head: head(),
            body: Vec::new(),
        });
        assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            &*answer.body,
            b"500 internal: internal error; see the agent's log\n"
        );
        let answer = broken.reject(&HttpError::bad_request("no"));
        assert_eq!(answer.status, StatusCode::BAD_REQUEST);
        assert!(answer.close);

        let fine = Guarded(Arc::new(Fine));
        assert!(matches!(fine.admit(&head()), Admission::Serve(Lane::Quick)));
        let answer = fine.reject(&HttpError::bad_request("no"));
        assert_eq!(
            (answer.status, &*answer.body),
            (StatusCode::BAD_REQUEST, &b"bad_request"[..])
        );
        assert!(!answer.close);
    }
}
