//! `compress` on a listener or a route: which responses geolb compresses
//! on their way to the client, with which algorithms and levels.

use std::sync::Arc;

use toml::de::DeValue;

use super::model::*;
use super::values::is_tchar;
use super::walk::{Ctx, Field};

const EXAMPLE: &str = "{ algorithms = [\"zstd\", \"br\", \"gzip\"], min_size = \"1KiB\" }";

impl Ctx {
    /// `compress`: `true` (the defaults), `false` (off), or a table.
    pub(super) fn compress(&mut self, f: &Field<'_, '_>) -> Option<Option<Arc<CompressConfig>>> {
        if let DeValue::Boolean(on) = f.get() {
            return Some(on.then(|| Arc::new(CompressConfig::default())));
        }
        let expected = format!("expected true, false or a table like {EXAMPLE}");
        self.table(f, &expected, |c, t| {
            let d = CompressConfig::default();
            let algorithms = c.opt(t, "algorithms", d.algorithms, Ctx::algorithms);
            let min_size = c.opt(t, "min_size", d.min_size, |c, f| c.byte_size(f, 1 << 30));
            let types = c.opt(t, "types", d.types, Ctx::media_types);
            let levels = c.opt(t, "level", d.levels, Ctx::levels);
            Some(Some(Arc::new(CompressConfig {
                algorithms: algorithms?,
                min_size: min_size?,
                types: types?,
                levels: levels?,
            })))
        })
    }

    fn algorithms(&mut self, f: &Field<'_, '_>) -> Option<Vec<Encoding>> {
        let items = self.array(f, "expected a list like [\"zstd\", \"br\", \"gzip\"]")?;
        if items.is_empty() {
            let why =
                "an empty list compresses nothing: list at least one, or set compress = false";
            self.bad(f, why);
            return None;
        }
        let mut seen = Vec::new();
        self.each(&items, |c, item| {
            let e = c.choice(item, Encoding::SPELLINGS)?;
            if seen.contains(&e) {
                c.bad(item, "listed twice: remove one");
                return None;
            }
            seen.push(e);
            Some(e)
        })
    }

    fn media_types(&mut self, f: &Field<'_, '_>) -> Option<Vec<String>> {
        let items = self.array(f, "expected a list like [\"text/*\", \"application/json\"]")?;
        if items.is_empty() {
            let why = "an empty list compresses nothing: list types, or set compress = false";
            self.bad(f, why);
            return None;
        }
        self.each(&items, |c, item| c.parsed(item, media_type))
    }

    fn levels(&mut self, f: &Field<'_, '_>) -> Option<CompressLevels> {
        let expected = "expected a table like { gzip = 1, br = 1, zstd = 1 }: \
                        each algorithm has its own scale";
        self.table(f, expected, |c, t| {
            let d = CompressLevels::default();
            let gzip = c.opt(t, "gzip", d.gzip, |c, f| c.uint(f, 1, 9));
            let br = c.opt(t, "br", d.br, |c, f| c.uint(f, 0, 11));
            let zstd = c.opt(t, "zstd", d.zstd, |c, f| c.int(f, 1, 19).map(|n| n as i32));
            Some(CompressLevels {
                gzip: gzip?,
                br: br?,
                zstd: zstd?,
            })
        })
    }
}

/// "type/subtype" or "type/*", lower-cased; "*/*" would compress what is
/// compressed already (images, video, archives).
fn media_type(s: &str) -> Result<String, String> {
    let form = "expected a media type like \"application/json\" or \"text/*\"";
    let (ty, sub) = s.split_once('/').ok_or_else(|| form.to_owned())?;
    let token = |p: &str| !p.is_empty() && p.bytes().all(is_tchar);
    if ty == "*" {
        return Err(
            "\"*/*\" would compress images, video and archives, which are compressed \
                    already: list the types, e.g. \"text/*\""
                .to_owned(),
        );
    }
    if !token(ty) || !(sub == "*" || token(sub)) || sub.contains('*') && sub != "*" {
        return Err(form.to_owned());
    }
    Ok(s.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::super::tests::{errors, parse};
    use super::*;

    const POOL: &str = "[[pool]]\nname = \"p\"\nbackends = [{ addr = \"127.0.0.1:8080\" }]\n";
    const LISTENER: &str = "[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:80\"\npool = \"p\"\n";

    fn listener(extra: &str) -> super::super::ListenerConfig {
        let text = format!("{POOL}{LISTENER}{extra}");
        parse(&text).unwrap_or_else(|e| panic!("{e}")).listeners[0].clone()
    }

    #[test]
    fn off_unless_set_and_true_means_the_defaults() {
        assert_eq!(listener("").compress, None);
        assert_eq!(listener("compress = false").compress, None);
        let on = listener("compress = true").compress.unwrap();
        assert_eq!(*on, CompressConfig::default());
        assert_eq!(
            on.algorithms,
            [Encoding::Zstd, Encoding::Br, Encoding::Gzip]
        );
        assert_eq!(on.min_size, 1024);
        assert_eq!(
            on.levels,
            CompressLevels {
                gzip: 2,
                br: 1,
                zstd: 1
            }
        );
    }

    #[test]
    fn a_table_sets_each_key() {
        let c = listener(
            "compress = { algorithms = [\"gzip\"], min_size = \"2KiB\", \
             types = [\"Text/HTML\", \"application/*\"], level = { gzip = 6, zstd = 3 } }",
        )
        .compress
        .unwrap();
        assert_eq!(c.algorithms, [Encoding::Gzip]);
        assert_eq!(c.min_size, 2048);
        assert_eq!(c.types, ["text/html", "application/*"]);
        assert_eq!(
            c.levels,
            CompressLevels {
                gzip: 6,
                br: 1,
                zstd: 3
            }
        );
        assert_eq!(
            listener("compress = { min_size = 0 }")
                .compress
                .unwrap()
                .min_size,
            0
        );
    }

    #[test]
    fn a_route_overrides_the_listener() {
        let l = listener(
            "compress = true\nroutes = [\
             { path_prefix = \"/raw/\", pool = \"p\", compress = false },\
             { path_prefix = \"/gz/\", pool = \"p\", compress = { algorithms = [\"gzip\"] } },\
             { path_prefix = \"/same/\", pool = \"p\" }]",
        );
        assert_eq!(l.routes[0].compress, Some(None));
        assert_eq!(
            l.routes[1]
                .compress
                .as_ref()
                .unwrap()
                .as_ref()
                .unwrap()
                .algorithms,
            [Encoding::Gzip]
        );
        assert_eq!(l.routes[2].compress, None);
    }

    #[test]
    fn each_mistake_names_its_key() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "compress = \"gzip\"",
                "listener[0].compress",
                "true, false or a table",
            ),
            (
                "compress = { algorithms = [\"deflate\"] }",
                "listener[0].compress.algorithms[0]",
                "\"zstd\" | \"br\" | \"gzip\"",
            ),
            (
                "compress = { algorithms = [\"gzip\", \"gzip\"] }",
                "listener[0].compress.algorithms[1]",
                "twice",
            ),
            (
                "compress = { algorithms = [] }",
                "listener[0].compress.algorithms",
                "compresses nothing",
            ),
            (
                "compress = { min_size = \"2GiB\" }",
                "listener[0].compress.min_size",
                "at most 1GiB",
            ),
            (
                "compress = { min_size = \"lots\" }",
                "listener[0].compress.min_size",
                "a string with a unit",
            ),
            (
                "compress = { min_size = -1 }",
                "listener[0].compress.min_size",
                "from 0",
            ),
            (
                "compress = { min_size = \"2048MiB\" }",
                "listener[0].compress.min_size",
                "at most 1GiB",
            ),
            (
                "compress = { types = [\"json\"] }",
                "listener[0].compress.types[0]",
                "media type",
            ),
            (
                "compress = { types = [\"*/*\"] }",
                "listener[0].compress.types[0]",
                "compressed already",
            ),
            (
                "compress = { types = [\"text/h*\"] }",
                "listener[0].compress.types[0]",
                "media type",
            ),
            (
                "compress = { types = [] }",
                "listener[0].compress.types",
                "compresses nothing",
            ),
            (
                "compress = { level = 5 }",
                "listener[0].compress.level",
                "own scale",
            ),
            (
                "compress = { level = { gzip = 10 } }",
                "listener[0].compress.level.gzip",
                "1 to 9",
            ),
            (
                "compress = { level = { br = 12 } }",
                "listener[0].compress.level.br",
                "0 to 11",
            ),
            (
                "compress = { level = { zstd = 0 } }",
                "listener[0].compress.level.zstd",
                "1 to 19",
            ),
            (
                "compress = { min = 10 }",
                "listener[0].compress.min",
                "unknown key",
            ),
            (
                "routes = [{ path_prefix = \"/a/\", pool = \"p\", compress = 1 }]",
                "listener[0].routes[0].compress",
                "true, false",
            ),
            (
                "protocol = \"tcp\"\ncompress = true",
                "listener[0].compress",
                "tcp listener",
            ),
        ];
        for (extra, path, words) in cases {
            let found = errors(&format!("{POOL}{LISTENER}{extra}"));
            assert_eq!(found.len(), 1, "{extra}: {found:?}");
            assert_eq!(found[0].path, *path, "{extra}");
            assert!(
                found[0].message.contains(words),
                "{path}: {}",
                found[0].message
            );
            assert!(found[0].line.is_some(), "{extra}: no line");
        }
    }
}
