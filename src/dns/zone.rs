//! Zones compiled from `[[dns.zone]]`: the inline records merged with the
//! optional RFC 1035 master file, checked as one zone.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::Path;

use hickory_proto::rr::rdata::{A, AAAA, CAA, CNAME, MX, NS, SOA, SRV, TXT};
use hickory_proto::rr::{DNSClass, LowerName, Name, RData, Record, RecordType};
use hickory_proto::serialize::txt::{LexerError, ParseError, Parser};

use super::dnssec;
use crate::config::{ConfigError, DnsConfig, RecordData, ZoneConfig};

/// Types geolb serves from configuration and zone files.
const SERVED_TYPES: [RecordType; 9] = [
    RecordType::SOA,
    RecordType::NS,
    RecordType::A,
    RecordType::AAAA,
    RecordType::CNAME,
    RecordType::MX,
    RecordType::TXT,
    RecordType::SRV,
    RecordType::CAA,
];

#[derive(Debug, Default)]
pub(crate) struct Zones {
    by_origin: HashMap<LowerName, Zone>,
}

#[derive(Debug)]
pub(crate) struct Zone {
    pub origin: Name,
    lower_origin: LowerName,
    /// For the authority section of negative answers: TTL
    /// min(SOA TTL, SOA minimum) (RFC 2308 §5).
    pub negative_soa: Record,
    nodes: HashMap<LowerName, Node>,
    /// Names with nothing of their own but names below them.
    empty_non_terminals: HashSet<LowerName>,
    /// Geo names of this zone: index into the geo names.
    geo: HashMap<LowerName, usize>,
    has_wildcards: bool,
    /// Present when the zone is signed (`dnssec`).
    pub signer: Option<dnssec::Signer>,
}

#[derive(Debug, Default)]
pub(crate) struct Node {
    /// At the apex, SOA then NS come first.
    pub rrsets: Vec<RrSet>,
}

#[derive(Debug)]
pub(crate) struct RrSet {
    pub rtype: RecordType,
    pub records: Vec<Record>,
}

impl Node {
    pub fn get(&self, rtype: RecordType) -> Option<&RrSet> {
        self.rrsets.iter().find(|s| s.rtype == rtype)
    }
}

/// What a name is in its zone.
pub(crate) enum Found<'z> {
    /// Records; `wildcard` when synthesised from `*.<closest encloser>`,
    /// whose records then take the queried name as owner.
    Node {
        node: &'z Node,
        wildcard: bool,
    },
    /// A geo name (index into the geo names), with the node of static
    /// records also there: only a geo name at a zone apex has one.
    Geo {
        index: usize,
        node: Option<&'z Node>,
    },
    EmptyNonTerminal,
    Missing,
}

impl Zones {
    /// The zone answering for `name`: the one with the longest origin
    /// containing it.
    pub fn zone_for(&self, name: &LowerName) -> Option<&Zone> {
        let mut name = name.clone();
        loop {
            if let Some(zone) = self.by_origin.get(&name) {
                return Some(zone);
            }
            if name.is_root() {
                return None;
            }
            name = name.base_name();
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Zone> {
        self.by_origin.values()
    }
}

impl Zone {
    pub fn find(&self, name: &LowerName) -> Found<'_> {
        if let Some(&index) = self.geo.get(name) {
            return Found::Geo {
                index,
                node: self.nodes.get(name),
            };
        }
        if let Some(node) = self.nodes.get(name) {
            return Found::Node {
                node,
                wildcard: false,
            };
        }
        if self.empty_non_terminals.contains(name) {
            return Found::EmptyNonTerminal;
        }
        if self.has_wildcards {
            // RFC 4592: only the wildcard child of the closest encloser applies.
            let mut encloser = name.base_name();
            while encloser.num_labels() >= self.lower_origin.num_labels() {
                if self.exists(&encloser) {
                    let wildcard = Name::from(&encloser)
                        .prepend_label("*")
                        .ok()
                        .and_then(|w| self.nodes.get(&LowerName::from(w)));
                    if let Some(node) = wildcard {
                        return Found::Node {
                            node,
                            wildcard: true,
                        };
                    }
                    break;
                }
                encloser = encloser.base_name();
            }
        }
        Found::Missing
    }

    /// Serves the keys' DNSKEY, CDS and CDNSKEY RRsets at the apex and
    /// signs with them.
    fn sign_with(&mut self, keys: dnssec::Keys) {
        let apex = self.nodes.entry(self.lower_origin.clone()).or_default();
        for (rtype, records) in keys.apex {
            if !records.is_empty() {
                apex.rrsets.push(RrSet { rtype, records });
            }
        }
        self.signer = Some(keys.signer);
    }

    /// The SOA record (of the zone's TTL).
    pub fn soa(&self) -> Option<&Record> {
        self.nodes
            .get(&self.lower_origin)?
            .get(RecordType::SOA)?
            .records
            .first()
    }

    /// The indexes of the geo names in this zone.
    pub fn geo_indexes(&self) -> impl Iterator<Item = usize> + '_ {
        self.geo.values().copied()
    }

    /// Every name with records of its own.
    pub fn nodes(&self) -> impl Iterator<Item = (&LowerName, &Node)> {
        self.nodes.iter()
    }

    fn exists(&self, name: &LowerName) -> bool {
        self.nodes.contains_key(name)
            || self.geo.contains_key(name)
            || self.empty_non_terminals.contains(name)
    }
}

/// Where a record came from, for error messages.
#[derive(Clone, Copy, PartialEq)]
enum Source {
    Inline,
    File,
}

/// Compiles every zone of `dns`; `geo` lists each geo name with its index.
/// Errors name `dns.zone[i].file` (or `dns.zone[i]`).
pub(crate) fn compile(dns: &DnsConfig, geo: &[LowerName]) -> Result<Zones, Vec<ConfigError>> {
    let origins: Vec<LowerName> = dns
        .zones
        .iter()
        .filter_map(|z| Name::from_ascii(&z.origin).ok().map(LowerName::from))
        .collect();
    let mut errors = Vec::new();
    let mut zones = Zones::default();
    for (i, config) in dns.zones.iter().enumerate() {
        let key = if config.file.is_some() {
            format!("dns.zone[{i}].file")
        } else {
            format!("dns.zone[{i}]")
        };
        let mut report = |message: String| errors.push(ConfigError::at(&key, message));
        match compile_zone(config, &origins, geo) {
            Ok(mut zone) => {
                if let Some(dnssec) = &config.dnssec {
                    match dnssec::load(dnssec, &zone.origin, config.ttl) {
                        Ok(keys) => zone.sign_with(keys),
                        Err(problems) => errors.extend(problems.into_iter().map(|(j, e)| {
                            ConfigError::at(format!("dns.zone[{i}].dnssec.keys[{j}].file"), e)
                        })),
                    }
                }
                zones.by_origin.insert(zone.lower_origin.clone(), zone);
            }
            Err(problems) => {
                let shown = config
                    .file
                    .as_ref()
                    .map(|f| format!("= {:?}: ", f.display().to_string()))
                    .unwrap_or_default();
                for problem in problems {
                    report(format!("{shown}{problem}"));
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(zones)
    } else {
        Err(errors)
    }
}

/// A name in the config that hickory cannot read.
#[derive(Debug, thiserror::Error)]
#[error("{name}: not a domain name: {source}")]
struct BadName {
    name: String,
    source: hickory_proto::ProtoError,
}

/// A master file that cannot be used.
#[derive(Debug, thiserror::Error)]
enum ZoneFileError {
    #[error("cannot read: {0}")]
    Read(#[from] std::io::Error),
    #[error("line {line}: {error}")]
    AtLine { line: usize, error: ParseError },
    #[error("{0}")]
    Parse(ParseError),
}

fn name(s: &str) -> Result<Name, BadName> {
    Name::from_ascii(s).map_err(|source| BadName {
        name: s.to_owned(),
        source,
    })
}

fn compile_zone(
    config: &ZoneConfig,
    origins: &[LowerName],
    geo_names: &[LowerName],
) -> Result<Zone, Vec<String>> {
    let origin = name(&config.origin).map_err(|e| vec![e.to_string()])?;
    let lower_origin = LowerName::from(&origin);
    let soa_config = &config.soa;
    let secs = |d: std::time::Duration| i32::try_from(d.as_secs()).unwrap_or(i32::MAX);
    let soa_data = SOA::new(
        name(&soa_config.mname).map_err(|e| vec![e.to_string()])?,
        name(&soa_config.rname).map_err(|e| vec![e.to_string()])?,
        soa_config.serial,
        secs(soa_config.refresh),
        secs(soa_config.retry),
        secs(soa_config.expire),
        u32::try_from(soa_config.minimum.as_secs()).unwrap_or(u32::MAX),
    );
    let soa = Record::from_rdata(origin.clone(), config.ttl, RData::SOA(soa_data.clone()));
    let mut negative_soa = soa.clone();
    negative_soa.ttl = config.ttl.min(soa_data.minimum);
    let ns_names: Vec<Name> = config
        .ns
        .iter()
        .map(|n| name(n))
        .collect::<Result<_, _>>()
        .map_err(|e| vec![e.to_string()])?;

    // Everything but the SOA and NS, which come from the config.
    let mut records: Vec<(Record, Source)> = Vec::new();
    let mut problems = Vec::new();
    for r in &config.records {
        match name(&r.name).and_then(|owner| Ok((owner, rdata(&r.data)?))) {
            Ok((owner, data)) => {
                records.push((Record::from_rdata(owner, r.ttl, data), Source::Inline))
            }
            Err(e) => problems.push(e.to_string()),
        }
    }
    if let Some(path) = &config.file {
        match parse_file(path, &origin, config.ttl) {
            Ok(from_file) => records.extend(from_file.into_iter().map(|r| (r, Source::File))),
            Err(e) => problems.push(e.to_string()),
        }
    }

    let children: Vec<&LowerName> = origins
        .iter()
        .filter(|o| **o != lower_origin && lower_origin.zone_of(o))
        .collect();
    let geo_here: HashMap<LowerName, usize> = geo_names
        .iter()
        .enumerate()
        .filter(|(_, g)| lower_origin.zone_of(g) && !children.iter().any(|c| c.zone_of(g)))
        .map(|(i, g)| (g.clone(), i))
        .collect();

    let mut nodes: HashMap<LowerName, Node> = HashMap::new();
    let mut order: Vec<LowerName> = Vec::new();
    for (record, source) in records {
        let owner = LowerName::from(&record.name);
        let rtype = record.record_type();
        let what = format!("{} {rtype}", record.name);
        if !lower_origin.zone_of(&owner) {
            problems.push(format!("{what}: outside the zone {origin}"));
            continue;
        }
        if let Some(child) = children.iter().find(|c| c.zone_of(&owner)) {
            problems.push(format!(
                "{what}: lies in the zone {child}, which answers for it: move the record there"
            ));
            continue;
        }
        if record.dns_class != DNSClass::IN {
            problems.push(format!(
                "{what}: class {} is not served; use IN",
                record.dns_class
            ));
            continue;
        }
        if !SERVED_TYPES.contains(&rtype) {
            problems.push(format!(
                "{what}: type {rtype} is not served (A, AAAA, CNAME, MX, NS, SOA, TXT, SRV, CAA are)"
            ));
            continue;
        }
        if geo_here.contains_key(&owner) {
            problems.push(format!(
                "{what}: {} is a geo name: its answers come from the data centers, \
                 so it cannot have static records",
                record.name
            ));
            continue;
        }
        match (&record.data, owner == lower_origin) {
            (RData::SOA(file_soa), true) => {
                if *file_soa != soa_data {
                    problems.push(format!(
                        "{what}: conflicts with the zone's soa key ({soa_data}); \
                         remove it from the file or make them equal"
                    ));
                }
                continue;
            }
            (RData::SOA(_), false) => {
                problems.push(format!(
                    "{what}: an SOA record belongs at the apex {origin} only"
                ));
                continue;
            }
            (RData::NS(target), true) => {
                if !ns_names.contains(&target.0) {
                    problems.push(format!(
                        "{what}: {} is not in the zone's ns key ({}); list every name server there",
                        target.0,
                        config.ns.join(", ")
                    ));
                }
                continue;
            }
            (RData::NS(_), false) => {
                problems.push(format!(
                    "{what}: an NS record below the apex would delegate {} to other servers, \
                     which geolb does not do; serve it as its own [[dns.zone]]",
                    record.name
                ));
                continue;
            }
            (RData::CNAME(_), true) => {
                problems.push(format!(
                    "{what}: a CNAME cannot be at the zone apex, which holds the SOA and NS records"
                ));
                continue;
            }
            _ => {}
        }
        let node = nodes.entry(owner.clone()).or_insert_with(|| {
            order.push(owner.clone());
            Node::default()
        });
        match node.rrsets.iter_mut().find(|s| s.rtype == rtype) {
            None => node.rrsets.push(RrSet {
                rtype,
                records: vec![record],
            }),
            Some(set) => {
                if set.records.iter().any(|r| r.data == record.data) {
                    continue;
                }
                let ttl = set.records[0].ttl;
                if ttl != record.ttl {
                    let hint = if source == Source::File {
                        "in the file"
                    } else {
                        "inline"
                    };
                    problems.push(format!(
                        "{what}: ttl {} ({hint}) differs from {ttl} of the other {rtype} records \
                         of that name: records of one name and type share one TTL",
                        record.ttl
                    ));
                    continue;
                }
                set.records.push(record);
            }
        }
    }
    for owner in &order {
        let node = &nodes[owner];
        if node.get(RecordType::CNAME).is_some() {
            let cnames = &node.get(RecordType::CNAME).map_or(0, |s| s.records.len());
            if node.rrsets.len() > 1 || *cnames > 1 {
                problems.push(format!(
                    "{owner} CNAME: a CNAME must be the only record at its name, and be alone"
                ));
            }
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }

    // The apex: SOA, NS, then whatever else the zone put there.
    let apex = nodes.entry(lower_origin.clone()).or_default();
    let ns = RrSet {
        rtype: RecordType::NS,
        records: ns_names
            .into_iter()
            .map(|n| Record::from_rdata(origin.clone(), config.ttl, RData::NS(NS(n))))
            .collect(),
    };
    let soa_set = RrSet {
        rtype: RecordType::SOA,
        records: vec![soa],
    };
    apex.rrsets.splice(0..0, [soa_set, ns]);

    let mut empty_non_terminals = HashSet::new();
    for name in nodes.keys().chain(geo_here.keys()) {
        let mut parent = name.clone();
        while parent.num_labels() > lower_origin.num_labels() {
            parent = parent.base_name();
            if !nodes.contains_key(&parent) && !geo_here.contains_key(&parent) {
                empty_non_terminals.insert(parent.clone());
            }
        }
    }
    let has_wildcards = nodes.keys().any(|n| n.is_wildcard());
    Ok(Zone {
        origin,
        lower_origin,
        negative_soa,
        nodes,
        empty_non_terminals,
        geo: geo_here,
        has_wildcards,
        signer: None,
    })
}

fn rdata(data: &RecordData) -> Result<RData, BadName> {
    Ok(match data {
        RecordData::A(ip) => RData::A(A(*ip)),
        RecordData::Aaaa(ip) => RData::AAAA(AAAA(*ip)),
        RecordData::Cname(target) => RData::CNAME(CNAME(name(target)?)),
        RecordData::Ns(target) => RData::NS(NS(name(target)?)),
        RecordData::Mx {
            preference,
            exchange,
        } => RData::MX(MX::new(*preference, name(exchange)?)),
        RecordData::Txt(text) => {
            // One literal string, cut into character-strings of at most 255
            // bytes (RFC 1035 §3.3), as long SPF and DKIM values are.
            let mut chunks: Vec<&[u8]> = text.as_bytes().chunks(255).collect();
            if chunks.is_empty() {
                chunks.push(b"");
            }
            RData::TXT(TXT::from_bytes(chunks))
        }
        RecordData::Srv {
            priority,
            weight,
            port,
            target,
        } => RData::SRV(SRV::new(*priority, *weight, *port, name(target)?)),
        RecordData::Caa { flags, tag, value } => {
            // The fields are public but the struct is non-exhaustive.
            let mut caa = CAA::new_issue(false, None, Vec::new());
            caa.issuer_critical = flags & 0x80 != 0;
            caa.reserved_flags = flags & 0x7f;
            caa.tag = tag.clone();
            caa.value = value.as_bytes().to_vec();
            RData::CAA(caa)
        }
    })
}

/// The records of a master file; names without a TTL get the zone's.
fn parse_file(path: &Path, origin: &Name, ttl: u32) -> Result<Vec<Record>, ZoneFileError> {
    let text = fs::read_to_string(path)?;
    let parse = |body: &str| {
        Parser::new(
            format!("$TTL {ttl}\n{body}"),
            Some(path.to_path_buf()),
            Some(origin.clone()),
        )
        .parse()
    };
    match parse(&text) {
        Ok((_, sets)) => Ok(sets
            .values()
            .flat_map(|set| set.records_without_rrsigs().cloned())
            .collect()),
        Err(error) => Err(match error_line(&text, parse) {
            Some(line) => ZoneFileError::AtLine { line, error },
            None => ZoneFileError::Parse(error),
        }),
    }
}

/// The line where `text` stops parsing: the shortest prefix of whole lines
/// that fails for a reason other than being cut short. The parser reads in
/// order, so every longer prefix fails too, and a binary search finds it.
fn error_line<T>(text: &str, parse: impl Fn(&str) -> Result<T, ParseError>) -> Option<usize> {
    let cut_short = |e: &ParseError| {
        matches!(
            e,
            ParseError::Lexer(
                LexerError::UnclosedList | LexerError::UnclosedQuotedString | LexerError::EOF
            )
        )
    };
    let fails = |end: usize| matches!(parse(&text[..end]), Err(e) if !cut_short(&e));
    let mut ends: Vec<usize> = text.match_indices('\n').map(|(i, _)| i + 1).collect();
    if ends.last() != Some(&text.len()) {
        ends.push(text.len());
    }
    // ends[hi] fails; find the first index that does.
    let (mut lo, mut hi) = (0, ends.len().checked_sub(1)?);
    if !fails(ends[hi]) {
        return None;
    }
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if fails(ends[mid]) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Some(lo + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Identity, RecordConfig, SoaConfig};
    use std::path::PathBuf;
    use std::time::Duration;

    fn zone(origin: &str, records: Vec<RecordConfig>, file: Option<PathBuf>) -> ZoneConfig {
        ZoneConfig {
            origin: origin.into(),
            ttl: 300,
            soa: SoaConfig {
                mname: format!("ns1.{origin}"),
                rname: format!("hostmaster.{origin}"),
                serial: 7,
                refresh: Duration::from_secs(3600),
                retry: Duration::from_secs(600),
                expire: Duration::from_secs(86400),
                minimum: Duration::from_secs(60),
            },
            ns: vec![format!("ns1.{origin}")],
            file,
            records,
            dnssec: None,
            transfer: None,
            notify: Vec::new(),
        }
    }

    fn record(name: &str, data: RecordData) -> RecordConfig {
        RecordConfig {
            name: name.into(),
            ttl: 300,
            data,
        }
    }

    fn dns(zones: Vec<ZoneConfig>) -> DnsConfig {
        DnsConfig {
            listen: vec![],
            udp_threads: 1,
            query_log: 0.0,
            zones,
            geo: vec![],
            rrl: Default::default(),
            cookie_secret: None,
            tcp: Default::default(),
            nsid: Identity::Off,
            chaos: Default::default(),
            tsig: Vec::new(),
            ixfr_versions: 10,
        }
    }

    fn lower(s: &str) -> LowerName {
        LowerName::from(Name::from_ascii(s).unwrap())
    }

    fn write(dir: &tempfile::TempDir, text: &str) -> PathBuf {
        let path = dir.path().join("zone.txt");
        fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn file_and_inline_records_merge_with_the_zone_ttl_as_default() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(
            &dir,
            "www 60 IN A 192.0.2.9\nmail IN MX 10 mx.example.com.\n\
             long TXT \"first part\" \"second part\"\n@ NS ns1.example.com.\n",
        );
        let z = zone(
            "example.com.",
            vec![record(
                "www.example.com.",
                RecordData::A("192.0.2.1".parse().unwrap()),
            )],
            Some(file),
        );
        // The inline www has TTL 300, the file's 60: one RRset, one TTL.
        let err = compile(&dns(vec![z.clone()]), &[]).unwrap_err();
        assert!(err[0].message.contains("share one TTL"), "{err:?}");
        assert_eq!(err[0].path, "dns.zone[0].file");

        let file = write(
            &dir,
            "www 300 IN A 192.0.2.1\nwww A 192.0.2.2\nmail IN MX 10 mx.example.com.\n\
             a.b.c TXT \"deep\"\n@ NS ns1.example.com.\n",
        );
        let z = ZoneConfig {
            file: Some(file),
            ..z
        };
        let zones = compile(&dns(vec![z]), &[]).unwrap();
        let zone = zones.zone_for(&lower("x.www.example.com.")).unwrap();
        let Found::Node { node, .. } = zone.find(&lower("www.example.com.")) else {
            panic!()
        };
        assert_eq!(node.get(RecordType::A).unwrap().records.len(), 2);
        let Found::Node { node, .. } = zone.find(&lower("mail.example.com.")) else {
            panic!()
        };
        assert_eq!(node.get(RecordType::MX).unwrap().records[0].ttl, 300);
        assert!(matches!(
            zone.find(&lower("b.c.example.com.")),
            Found::EmptyNonTerminal
        ));
        assert!(matches!(
            zone.find(&lower("c.example.com.")),
            Found::EmptyNonTerminal
        ));
        assert!(matches!(
            zone.find(&lower("nope.example.com.")),
            Found::Missing
        ));
        let Found::Node { node, .. } = zone.find(&lower("example.com.")) else {
            panic!()
        };
        assert_eq!(node.rrsets[0].rtype, RecordType::SOA);
        assert_eq!(
            node.rrsets[1].records.len(),
            1,
            "the file's NS is the config's"
        );
        assert_eq!(zone.negative_soa.ttl, 60);
    }

    #[test]
    fn zone_file_conflicts_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (
                "@ SOA ns9.example.com. h.example.com. 1 2 3 4 5\n",
                "conflicts with the zone's soa",
            ),
            ("@ NS ns9.example.com.\n", "not in the zone's ns"),
            ("sub NS ns9.example.com.\n", "below the apex"),
            (
                "www CNAME x.example.com.\nwww A 192.0.2.1\n",
                "must be the only record",
            ),
            ("@ CNAME x.example.com.\n", "apex"),
            ("www.other.org. A 192.0.2.1\n", "outside the zone"),
            ("x PTR y.example.com.\n", "not served"),
            ("api A 192.0.2.1\n", "geo name"),
            (
                "x.child A 192.0.2.1\n",
                "lies in the zone child.example.com.",
            ),
            (
                "www IN A 192.0.2.1\nbad line here (\nok A 192.0.2.2\n",
                "line 2",
            ),
        ];
        for (text, expected) in cases {
            let file = write(&dir, text);
            let zones = vec![
                zone("example.com.", vec![], Some(file.clone())),
                zone("child.example.com.", vec![], None),
            ];
            let err = compile(&dns(zones), &[lower("api.example.com.")]).unwrap_err();
            assert_eq!(err.len(), 1, "{text}: {err:?}");
            assert_eq!(err[0].path, "dns.zone[0].file");
            let message = &err[0].message;
            assert!(message.contains(expected), "{text}: {message}");
            assert!(message.contains(&*file.display().to_string()), "{message}");
        }
        let missing = zone("example.com.", vec![], Some("/nonexistent/zone".into()));
        let err = compile(&dns(vec![missing]), &[]).unwrap_err();
        assert!(err[0].message.contains("cannot read"), "{err:?}");
    }

    #[test]
    fn parse_errors_name_their_line_also_after_multi_line_records() {
        let mut text = String::from(
            "@ SOA ns1.example.com. hostmaster.example.com. (\n 7 3600\n 600 86400 60 )\n",
        );
        for i in 0..200 {
            text.push_str(&format!("h{i} A 192.0.2.1\n"));
        }
        text.push_str("broken A not-an-address\nlast A 192.0.2.2\n");
        let dir = tempfile::tempdir().unwrap();
        let file = write(&dir, &text);
        let err = compile(&dns(vec![zone("example.com.", vec![], Some(file))]), &[]).unwrap_err();
        assert!(err[0].message.contains("line 204:"), "{err:?}");

        let file = write(&dir, "a A 192.0.2.1\nb TXT \"never closed\n");
        let err = compile(&dns(vec![zone("example.com.", vec![], Some(file))]), &[]).unwrap_err();
        assert!(!err[0].message.contains("line"), "{err:?}");
    }

    #[test]
    fn a_matching_soa_in_the_file_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(
            &dir,
            "@ 300 SOA ns1.example.com. hostmaster.example.com. 7 3600 600 86400 60\n",
        );
        assert!(compile(&dns(vec![zone("example.com.", vec![], Some(file))]), &[]).is_ok());
    }

    #[test]
    fn wildcards_apply_below_the_closest_encloser_only() {
        let records = vec![
            record("*.example.com.", RecordData::Txt("wild".into())),
            record("www.example.com.", RecordData::Txt("www".into())),
            record("a.deep.example.com.", RecordData::Txt("deep".into())),
        ];
        let zones = compile(&dns(vec![zone("example.com.", records, None)]), &[]).unwrap();
        let zone = zones.zone_for(&lower("example.com.")).unwrap();
        assert!(matches!(
            zone.find(&lower("anything.example.com.")),
            Found::Node { wildcard: true, .. }
        ));
        assert!(matches!(
            zone.find(&lower("x.y.example.com.")),
            Found::Node { wildcard: true, .. }
        ));
        // deep.example.com is an empty non-terminal: it exists, so it is
        // not synthesised, and names below it have it as closest encloser.
        assert!(matches!(
            zone.find(&lower("deep.example.com.")),
            Found::EmptyNonTerminal
        ));
        assert!(matches!(
            zone.find(&lower("b.deep.example.com.")),
            Found::Missing
        ));
        assert!(matches!(
            zone.find(&lower("x.www.example.com.")),
            Found::Missing
        ));
    }

    #[test]
    fn long_txt_values_are_split_into_character_strings() {
        let RData::TXT(txt) = rdata(&RecordData::Txt("x".repeat(600))).unwrap() else {
            panic!()
        };
        let lens: Vec<usize> = txt.txt_data.iter().map(|s| s.len()).collect();
        assert_eq!(lens, [255, 255, 90]);
    }
}
