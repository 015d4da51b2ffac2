//! The gateway routes each request by host and path. For any host and path a client can send,
//! the route it picks must be the first route that matches under every reading of the path an
//! app server might take (so no server sees a path of another route's), and a path that cannot
//! be read is refused, never routed.
#![no_main]

use hush_proxy::fuzzing::EdgeRoutes;
use libfuzzer_sys::fuzz_target;

const ROUTES: [(&str, &str); 5] = [
    ("shop.test", "/admin"),
    ("shop.test", "/api/v1"),
    ("shop.test", "/"),
    ("*.shop.test", "/internal"),
    ("*", "/public"),
];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (host, path) = text.split_once('\n').unwrap_or(("shop.test", text));
    let routes = EdgeRoutes::new(&ROUTES);
    match routes.pick(host, path) {
        Ok(index) => {
            let readings = hush_policy::read_path(path).expect("a routed path reads");
            for reading in readings.iter() {
                assert!(
                    routes.matches(index, host, reading),
                    "{path:?} as {reading:?}"
                );
                for earlier in 0..index {
                    assert!(
                        !routes.matches(earlier, host, reading),
                        "{path:?} as {reading:?}"
                    );
                }
            }
        }
        Err(status) => {
            assert!(status == 400 || status == 404, "{status}");
            if status == 404 {
                // Nothing matches under any reading.
                let readings = hush_policy::read_path(path).expect("a path judged readable");
                for reading in readings.iter() {
                    for index in 0..ROUTES.len() {
                        assert!(
                            !routes.matches(index, host, reading),
                            "{path:?} as {reading:?}"
                        );
                    }
                }
            }
        }
    }
});
