//! The SPDK backend: an NVMe namespace (or a range of its sectors) driven
//! from user space through SPDK, one polled I/O queue pair per queue (per
//! core), buffers from SPDK's DMA allocator.
//!
//! Every SPDK call is made by `osprey-spdk` (vendor/spdk); this module only
//! translates between the device interface and that wrapper, and has no
//! `unsafe`. A DMA buffer becomes an [`IoBuffer`] through
//! `IoBuffer::from_dma` (in `sys`, the engine's one unsafe module): the
//! wrapper hands the memory over with a release hook that frees it when the
//! `IoBuffer` drops.
//!
//! A device is named by an SPDK transport id plus Osprey's own keys:
//!
//! ```text
//! trtype:PCIe traddr:0000:01:00.0
//! trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:4420 subnqn:nqn.2016-06.io.spdk:osprey ns=1
//! trtype:PCIe traddr:0000:01:00.0 ns=1 lba_start=0 lba_count=1048576
//! ```
//!
//! `ns=N` picks the namespace (default 1); `lba_start=` and `lba_count=`
//! (in the namespace's sectors) make the device a slice of it, so one
//! namespace can hold several Osprey devices. Devices on one controller share
//! one attachment; each of their queues is its own NVMe queue pair.

use std::sync::Arc;
use std::time::Duration;

use osprey_spdk::{
    Command, Completed, Controller, DmaBuffer, Env, Namespace, QueuePair, QueuePairOptions,
    Refused, TransportId,
};

/// Test support: SPDK's `nvmf_tgt` serving a file over NVMe/TCP (for the
/// conformance suite and ospreyd's end-to-end tests).
pub use osprey_spdk::testing;
pub use osprey_spdk::EnvOptions;

use super::{
    check_op, Completion, Device, DeviceError, DeviceErrorKind, DeviceInfo, IoBuffer, IoKind, IoOp,
    Queue, SetupError, SubmitError,
};

/// How to open SPDK devices.
#[derive(Clone, Debug)]
pub struct SpdkOptions {
    /// SPDK's environment; the first device opened in a process starts it,
    /// later ones must ask for the same.
    pub env: EnvOptions,
    /// Commands in flight per queue.
    pub queue_depth: u32,
    /// The largest single I/O (SPDK splits what the drive cannot take at once).
    pub max_io_bytes: u32,
    /// How long dropping a queue waits for its commands.
    pub drain_timeout: Duration,
}

impl Default for SpdkOptions {
    fn default() -> Self {
        SpdkOptions {
            env: EnvOptions::default(),
            queue_depth: 128,
            max_io_bytes: 8 << 20,
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// A device name taken apart: SPDK's transport id and Osprey's keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpdkAddress {
    /// What SPDK parses (Osprey's keys removed), whitespace normalised.
    pub transport_id: String,
    pub namespace_id: u32,
    /// First sector of the slice.
    pub lba_start: u64,
    /// Sectors in the slice; `None`: to the end of the namespace.
    pub lba_count: Option<u64>,
}

impl SpdkAddress {
    /// Splits `text` into the transport id and the keys `ns`, `lba_start`,
    /// `lba_count` (written `key=value` or `key:value`).
    pub fn parse(text: &str) -> Result<SpdkAddress, String> {
        let mut transport = Vec::new();
        let mut namespace_id = 1u32;
        let mut lba_start = 0u64;
        let mut lba_count = None;
        for token in text.split_whitespace() {
            let (key, value) = match token.split_once(['=', ':']) {
                Some(kv) => kv,
                None => return Err(format!("{token:?} in {text:?} is not key:value")),
            };
            let number = |what: &str| {
                value.parse::<u64>().map_err(|_| {
                    format!("{what}={value:?} in {text:?} is not a non-negative integer")
                })
            };
            match key.to_ascii_lowercase().as_str() {
                "ns" => {
                    namespace_id = u32::try_from(number("ns")?)
                        .ok()
                        .filter(|&n| n >= 1)
                        .ok_or_else(|| format!("ns={value} in {text:?}: namespaces count from 1"))?
                }
                "lba_start" => lba_start = number("lba_start")?,
                "lba_count" => {
                    let n = number("lba_count")?;
                    if n == 0 {
                        return Err(format!("lba_count=0 in {text:?}: a device needs sectors"));
                    }
                    lba_count = Some(n);
                }
                _ => transport.push(token),
            }
        }
        if !transport
            .iter()
            .any(|t| t.to_ascii_lowercase().starts_with("trtype"))
        {
            return Err(format!(
                "{text:?} has no trtype: give e.g. \"trtype:PCIe traddr:0000:01:00.0\""
            ));
        }
        Ok(SpdkAddress {
            transport_id: transport.join(" "),
            namespace_id,
            lba_start,
            lba_count,
        })
    }
}

/// An NVMe namespace, or a slice of one, through SPDK.
pub struct SpdkDevice {
    info: Arc<DeviceInfo>,
    env: &'static Env,
    namespace: Arc<Namespace>,
    lba_start: u64,
    sector_bytes: u32,
    options: SpdkOptions,
}

impl SpdkDevice {
    /// Starts SPDK's environment if this is the first device, attaches the
    /// controller if no other device has, and checks the namespace and range.
    pub fn open(name: &str, options: &SpdkOptions) -> Result<SpdkDevice, SetupError> {
        let fail = |message: String| SetupError {
            device: name.to_string(),
            message,
        };
        let address = SpdkAddress::parse(name).map_err(fail)?;
        let env = Env::init(&options.env).map_err(|e| fail(e.message))?;
        let transport_id =
            TransportId::parse(&address.transport_id).map_err(|e| fail(e.message))?;
        let controller = Controller::attach(env, &transport_id).map_err(|e| fail(e.message))?;
        let namespace = controller
            .namespace(address.namespace_id)
            .map_err(|e| fail(e.message))?;
        let ns = namespace.info().clone();
        let sectors_left = ns.sectors.checked_sub(address.lba_start).filter(|&n| n > 0);
        let Some(sectors_left) = sectors_left else {
            return Err(fail(format!(
                "lba_start={} is past the end of namespace {} ({} sectors)",
                address.lba_start, ns.id, ns.sectors
            )));
        };
        let lba_count = address.lba_count.unwrap_or(sectors_left);
        if lba_count > sectors_left {
            return Err(fail(format!(
                "lba_start={} lba_count={lba_count} runs past the end of namespace {} ({} sectors)",
                address.lba_start, ns.id, ns.sectors
            )));
        }
        let sector = ns.sector_bytes;
        if !sector.is_power_of_two() || sector < 512 {
            return Err(fail(format!("unsupported sector size {sector}")));
        }
        if options.max_io_bytes < sector || !options.max_io_bytes.is_multiple_of(sector) {
            return Err(fail(format!(
                "max_io_bytes {} must be a multiple of the {sector}-byte sector",
                options.max_io_bytes
            )));
        }
        let info = DeviceInfo {
            name: name.to_string(),
            size_bytes: lba_count * u64::from(sector),
            min_io_bytes: sector,
            max_io_bytes: options.max_io_bytes,
            queue_depth: options.queue_depth.max(1),
        };
        Ok(SpdkDevice {
            info: Arc::new(info),
            env,
            namespace: Arc::new(namespace),
            lba_start: address.lba_start,
            sector_bytes: sector,
            options: options.clone(),
        })
    }
}

impl Device for SpdkDevice {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn alloc_buffer(&self, len: usize) -> Result<IoBuffer, SetupError> {
        let unit = self.info.min_io_bytes as usize;
        let rounded = len.max(1).div_ceil(unit) * unit;
        let dma = DmaBuffer::zeroed(self.env, rounded, unit.max(4096)).map_err(|e| SetupError {
            device: self.info.name.clone(),
            message: e.message,
        })?;
        Ok(IoBuffer::from_dma(dma))
    }

    fn open_queue(&self) -> Result<Box<dyn Queue>, SetupError> {
        let qpair = self
            .namespace
            .open_queue_pair::<IoBuffer>(&QueuePairOptions {
                depth: self.info.queue_depth,
                max_io_bytes: self.info.max_io_bytes,
                drain_timeout: self.options.drain_timeout,
            })
            .map_err(|e| SetupError {
                device: self.info.name.clone(),
                message: e.message,
            })?;
        Ok(Box::new(SpdkQueue {
            info: self.info.clone(),
            qpair,
            lba_start: self.lba_start,
            sector_bytes: u64::from(self.sector_bytes),
            failed: Vec::with_capacity(self.info.queue_depth as usize),
            reported_failure: false,
        }))
    }
}

/// One core's queue pair on an SPDK device.
struct SpdkQueue {
    info: Arc<DeviceInfo>,
    qpair: QueuePair<IoBuffer>,
    lba_start: u64,
    sector_bytes: u64,
    /// Ops SPDK refused after they passed our checks (a failed queue pair):
    /// they complete with an error at the next poll, like any device error.
    failed: Vec<Completion>,
    reported_failure: bool,
}

impl SpdkQueue {
    fn error(&self, op: IoKind, offset: u64, len: u64, message: String) -> DeviceError {
        DeviceError {
            device: self.info.name.clone(),
            op,
            offset,
            len,
            kind: DeviceErrorKind::Io(message),
        }
    }
}

impl Queue for SpdkQueue {
    fn submit(&mut self, op: IoOp) -> Result<(), SubmitError> {
        if let Err(e) = check_op(&self.info, &op) {
            return Err(SubmitError::Invalid(op, Box::new(e)));
        }
        if self.in_flight() >= self.info.queue_depth as usize {
            return Err(SubmitError::Full(op));
        }
        let IoOp {
            kind,
            offset,
            buffer,
            token,
        } = op;
        let (command, lba) = match kind {
            IoKind::Read => (Command::Read, self.lba_start + offset / self.sector_bytes),
            IoKind::Write => (Command::Write, self.lba_start + offset / self.sector_bytes),
            IoKind::Flush => (Command::Flush, offset),
        };
        let rebuild = |buffer| IoOp {
            kind,
            offset,
            buffer,
            token,
        };
        match self.qpair.submit(command, lba, buffer, token) {
            Ok(()) => Ok(()),
            Err(Refused::Full(buffer)) => Err(SubmitError::Full(rebuild(buffer))),
            Err(Refused::Invalid(buffer, why)) => {
                let len = buffer.len() as u64;
                let error = self.error(kind, offset, len, why);
                Err(SubmitError::Invalid(rebuild(buffer), Box::new(error)))
            }
            Err(Refused::Failed(buffer, why)) => {
                let len = buffer.len() as u64;
                let error = self.error(kind, offset, len, why);
                self.failed.push(rebuild(buffer).into_failed(error));
                Ok(())
            }
        }
    }

    fn poll(&mut self, out: &mut Vec<Completion>, max: usize) -> usize {
        let mut handed = 0;
        while handed < max {
            let Some(c) = self.failed.pop() else { break };
            out.push(c);
            handed += 1;
        }
        if handed >= max {
            return handed;
        }
        let limit = u32::try_from(max - handed).unwrap_or(u32::MAX);
        let (lba_start, sector_bytes, name) = (self.lba_start, self.sector_bytes, &self.info.name);
        let mut converted = 0;
        let outcome = self.qpair.poll(limit, &mut |done| {
            out.push(completion(done, lba_start, sector_bytes, name));
            converted += 1;
        });
        if let Err(e) = outcome {
            if !self.reported_failure {
                eprintln!("{}: {e}", self.info.name);
                self.reported_failure = true;
            }
        }
        handed + converted
    }

    fn in_flight(&self) -> usize {
        self.qpair.in_flight() + self.failed.len()
    }
}

/// A wrapper completion in device terms: byte offsets within this device,
/// errors naming it.
fn completion(
    done: Completed<IoBuffer>,
    lba_start: u64,
    sector_bytes: u64,
    name: &str,
) -> Completion {
    let kind = match done.command {
        Command::Read => IoKind::Read,
        Command::Write => IoKind::Write,
        Command::Flush => IoKind::Flush,
    };
    // A flush carries the caller's offset through untouched.
    let offset = match kind {
        IoKind::Flush => done.lba,
        _ => (done.lba - lba_start) * sector_bytes,
    };
    let len = done.buffer.len() as u64;
    Completion {
        token: done.tag,
        kind,
        offset,
        result: done.result.map_err(|status| DeviceError {
            device: name.to_string(),
            op: kind,
            offset,
            len,
            kind: DeviceErrorKind::Io(status.to_string()),
        }),
        buffer: done.buffer,
    }
}

#[cfg(test)]
mod tests {
    use super::SpdkAddress;

    #[test]
    fn osprey_keys_are_taken_out_of_the_transport_id() {
        let a = SpdkAddress::parse(
            "trtype:TCP  adrfam:IPv4 traddr:127.0.0.1 trsvcid:4420 subnqn:nqn.x:y ns=2 lba_start=8 lba_count:16",
        )
        .unwrap();
        assert_eq!(
            a,
            SpdkAddress {
                transport_id: "trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:4420 subnqn:nqn.x:y"
                    .to_string(),
                namespace_id: 2,
                lba_start: 8,
                lba_count: Some(16),
            }
        );
        let a = SpdkAddress::parse("trtype:PCIe traddr:0000:01:00.0").unwrap();
        assert_eq!(a.namespace_id, 1);
        assert_eq!((a.lba_start, a.lba_count), (0, None));
        assert_eq!(a.transport_id, "trtype:PCIe traddr:0000:01:00.0");
    }

    #[test]
    fn bad_keys_are_refused_with_the_reason() {
        for (text, why) in [
            ("trtype:PCIe traddr:0000:01:00.0 ns=0", "count from 1"),
            (
                "trtype:PCIe traddr:0000:01:00.0 ns=x",
                "not a non-negative integer",
            ),
            (
                "trtype:PCIe traddr:0000:01:00.0 lba_count=0",
                "needs sectors",
            ),
            ("traddr:0000:01:00.0", "no trtype"),
            ("trtype:PCIe bogus", "not key:value"),
        ] {
            let e = SpdkAddress::parse(text).unwrap_err();
            assert!(e.contains(why), "{text}: {e}");
        }
    }
}
